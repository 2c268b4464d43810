"""kuma-dp in Python: the dataplane agent of a Kuma service mesh."""

__version__ = "0.1.0"

#: The Envoy version Kuma v2.14.3 pins (`ENVOY_VERSION` in `mk/dev.mk`). The bootstrap request's
#: `kumaDpCompatible` is true when Envoy's version equals this or satisfies the semver constraint `~` this
#: (Kuma's `app/kuma-dp/pkg/dataplane/envoy/compatibility.go`).
EXPECTED_ENVOY_VERSION = "1.38.2"
