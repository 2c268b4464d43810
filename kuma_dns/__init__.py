"""kuma_dns: the local DNS server that answers `*.mesh` names with the control plane's virtual IPs.

Public surface (everything else is private to the package):

* `DNSComponent` - the server as a `kuma-dp run` component: `update(payload, etag)`, `not_modified()`,
  `ready` (listening), `has_records` (first table loaded: the readiness DNS gate), `store`, `port`, `metrics`;
* `from_agent(ctx)` - its agent factory; `bind_addresses(...)` - Kuma's bind-address table;
* `TableStore`, `parse_payload`, `build_table`, `PayloadError` - the pure table;
* `Forwarder`, `read_resolv_conf` - the upstream side; `DNSMetrics` - the `kuma_dp_dns_*` collector.

The names load their submodule on first use (kuma_dp/_lazy.py): `kuma-dp run` imports `kuma_dns.early`
within milliseconds of exec, and importing a submodule runs this `__init__` first, which must therefore not
pull in asyncio, json or prometheus_client.
"""

from __future__ import annotations

from kuma_dp._lazy import lazy_exports

#: `typing` costs ~10 ms to import and nothing on the start-up path needs it at run time; type checkers
#: read any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from kuma_dns.component import DNSComponent, RecordsFileError, bind_addresses, from_agent
    from kuma_dns.metrics import DNSMetrics
    from kuma_dns.table import PayloadError, TableStore, build_table, parse_payload
    from kuma_dns.upstream import Forwarder, read_resolv_conf

__all__ = [
    "DNSComponent",
    "DNSMetrics",
    "Forwarder",
    "PayloadError",
    "RecordsFileError",
    "TableStore",
    "bind_addresses",
    "build_table",
    "from_agent",
    "parse_payload",
    "read_resolv_conf",
]

__getattr__ = lazy_exports(
    "kuma_dns",
    {
        "DNSComponent": "component",
        "RecordsFileError": "component",
        "bind_addresses": "component",
        "from_agent": "component",
        "DNSMetrics": "metrics",
        "PayloadError": "table",
        "TableStore": "table",
        "build_table": "table",
        "parse_payload": "table",
        "Forwarder": "upstream",
        "read_resolv_conf": "upstream",
    },
)
