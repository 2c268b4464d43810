"""Envoy bootstrap templates, shipped inside the wheel and read with importlib.resources."""
