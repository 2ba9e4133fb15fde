"""Run the gateway: python -m gateway --artifact-root DIR [--address HOST:PORT] [--retrieval-target ...]."""

from gateway.server import serve

serve()
