"""Run the pass-through retrieval stage: python -m bench.passthrough.retrieval --artifact-root DIR [--address ...]."""

from bench.passthrough.releases import PassthroughRetrieval
from funnel.release.retrieval import RetrievalRelease
from funnel.serving.config import parse_config
from funnel.serving.manager import ReleaseManager
from funnel.serving.service import release_manager, run_service
from retrieval_service.config import RetrievalServiceConfig
from retrieval_service.server import create_server

if __name__ == "__main__":
    config = parse_config(RetrievalServiceConfig, None)
    releases: ReleaseManager[RetrievalRelease] = release_manager(config, "retrieval", PassthroughRetrieval)
    run_service("retrieval", config, lambda c: create_server(c, releases))
