"""kuma-dp in Python: the dataplane agent of a Kuma service mesh."""

__version__ = "0.1.0"

#: The Envoy version this agent is built and tested against; `kumaDpCompatible` is `~` this (see KUMA-DP.md §5.2).
EXPECTED_ENVOY_VERSION = "1.38.2"
