"""kuma_dns: the local DNS server that answers `*.mesh` names with the control plane's virtual IPs."""
