"""kuma-dp in Python: the dataplane agent of a Kuma service mesh."""

__version__ = "0.1.0"

#: The Envoy version Kuma v2.14.3 pins; `kumaDpCompatible` is `~` this (KUMA-DP.md §5.2).
EXPECTED_ENVOY_VERSION = "1.38.2"
