"""The zero-setup demo: the rig, a sample service, its load and a private Prometheus."""
