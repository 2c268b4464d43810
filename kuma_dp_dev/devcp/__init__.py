"""The development control plane (`kuma-dp dev-cp`): kuma-cp's wire protocol, small enough for a laptop.

`/bootstrap` over HTTP(S) (`bootstrap_server`), ADS over gRPC, the dynamic-config listener and VIPs, backed by
one in-memory store (`state`). Modules are imported where used: `kuma-dp run` never pays for this package.
"""
