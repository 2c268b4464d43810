# The kuma-init init container: installs the transparent-proxy rules in the pod's network namespace and exits.
# Build from the repository root: docker build -f packaging/docker/kuma-init.Dockerfile -t kuma-init .
# Run with capabilities NET_ADMIN and NET_RAW, as user 0, with Kuma's flags as arguments.

FROM debian:bookworm-slim AS build
# Package versions follow the base image's security updates; pinning them would freeze those out.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kuma_dp ./kuma_dp
COPY kuma_dns ./kuma_dns
COPY iptables ./iptables
COPY bootstrap_templates ./bootstrap_templates
# Only what kuma-init imports: the init container has no use for Envoy, grpc or the DNS server's deps.
# Their versions are bounded by pyproject.toml's ranges.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/kuma-dp \
    && /opt/kuma-dp/bin/pip install --no-cache-dir --no-deps . \
    && /opt/kuma-dp/bin/pip install --no-cache-dir "click>=8.1" "pyyaml>=6.0" "pyroute2>=0.7.12" \
    && /opt/kuma-dp/bin/pip uninstall -y pip \
    && /opt/kuma-dp/bin/python -c "import iptables.cli, iptables.kumactl"

FROM debian:bookworm-slim
# The kuma-dp user (uid 5678) is what the installer excludes when no --kuma-dp-user is given: it looks the
# name up here, as Kuma's kuma-init image has it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 iptables nftables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 5678 kuma-dp \
    && useradd --system --uid 5678 --gid kuma-dp --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin kuma-dp
COPY --from=build /opt/kuma-dp /opt/kuma-dp
COPY packaging/docker/kuma-init-entrypoint.sh /usr/local/bin/kuma-init-entrypoint
# Kuma's injector runs this image as `/usr/bin/kumactl install transparent-proxy ARGS` (its command replaces
# the entrypoint); `kuma-init ARGS` is the same installer without the kumactl prefix.
RUN ln -s /opt/kuma-dp/bin/kuma-init /usr/bin/kuma-init \
    && ln -s /opt/kuma-dp/bin/kumactl /usr/bin/kumactl
ENV XTABLES_LOCKFILE=/tmp/xtables.lock
# Installing rules needs root in the pod's namespace (with NET_ADMIN and NET_RAW), as Kuma's kuma-init.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/kuma-init-entrypoint"]
