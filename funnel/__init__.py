"""Funnel's shared package: config, artifact store, release format, server bootstrap and gRPC stubs."""

__version__ = "0.1.0"
