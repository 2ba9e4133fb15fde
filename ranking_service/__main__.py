"""Run the ranking service: python -m ranking_service --artifact-root DIR [--address HOST:PORT]."""

from ranking_service.server import serve

serve()
