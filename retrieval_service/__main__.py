"""Run the retrieval service: python -m retrieval_service --artifact-root DIR [--address HOST:PORT]."""

from retrieval_service.server import serve

serve()
