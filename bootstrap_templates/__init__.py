"""Envoy bootstrap templates, shipped inside the wheel and read with importlib.resources.

`envoy_bootstrap_v3.yaml` holds the fragments of kuma-cp v2.14.3's bootstrap (protobuf-JSON camelCase) with
typed `${name}` placeholders; `kuma_dp.bootstrap.render` fills them and picks the optional ones.
"""
