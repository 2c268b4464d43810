"""iptables: transparent-proxy rules (Kuma's KUMA_MESH_* chains), built purely and applied atomically."""
