"""Funnel's shared layers: release format and store (funnel.release), serving runtime (funnel.serving), data
(funnel.data), tools (funnel.cli), the gateway client (funnel.client) and the gRPC stubs (funnel.v1)."""

__version__ = "0.1.0"
