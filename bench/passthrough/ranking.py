"""Run the pass-through ranking stage: python -m bench.passthrough.ranking --artifact-root DIR [--address ...]."""

from bench.passthrough.releases import PassthroughRanking
from funnel.release.ranking import RankingRelease
from funnel.serving.config import parse_config
from funnel.serving.manager import ReleaseManager
from funnel.serving.service import release_manager, run_service
from ranking_service.config import RankingServiceConfig
from ranking_service.server import create_server

if __name__ == "__main__":
    config = parse_config(RankingServiceConfig, None)
    releases: ReleaseManager[RankingRelease] = release_manager(config, "ranking", PassthroughRanking)
    run_service("ranking", config, lambda c: create_server(c, releases))
