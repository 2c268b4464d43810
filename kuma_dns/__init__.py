"""kuma_dns: the local DNS server that answers `*.mesh` names with the control plane's virtual IPs.

Public surface (everything else is private to the package):

* `DNSComponent` - the server as a `kuma-dp run` component: `update(payload, etag)`, `not_modified()`,
  `ready` (listening), `has_records` (first table loaded: the readiness DNS gate), `store`, `port`, `metrics`;
* `from_agent(ctx)` - its agent factory; `bind_addresses(...)` - Kuma's bind-address table;
* `TableStore`, `parse_payload`, `build_table`, `PayloadError` - the pure table;
* `Forwarder`, `read_resolv_conf` - the upstream side; `DNSMetrics` - the `kuma_dp_dns_*` collector.
"""

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
