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
    && /opt/kuma-dp/bin/python -c "import iptables.cli"

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/kuma-dp /opt/kuma-dp
COPY packaging/docker/kuma-init-entrypoint.sh /usr/local/bin/kuma-init-entrypoint
RUN ln -s /opt/kuma-dp/bin/kuma-init /usr/bin/kuma-init
ENV XTABLES_LOCKFILE=/tmp/xtables.lock
# Installing rules needs root in the pod's namespace (with NET_ADMIN and NET_RAW), as Kuma's kuma-init.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/kuma-init-entrypoint"]
