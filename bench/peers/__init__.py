"""Other systems serving the same release, for side-by-side benchmarks: Ray Serve, PyTriton."""
