"""A pod runtime: Kuma's injector output (a Pod manifest) run as kubelet runs it, in network namespaces.

Start reading at `runtime.py` (Node, Pod); `spec.py` reads the manifest, `images.py` maps images to this
repository's entrypoints, `launch.py` is the container side, `prober.py` kubelet's prober, `app.py` the app.
"""
