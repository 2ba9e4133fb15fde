"""The ranking gRPC service: a thin servicer over Ranker, plus create_server() and serve()."""

from __future__ import annotations

import grpc

from funnel.release.ranking import RankingRelease
from funnel.serving.config import parse_config
from funnel.serving.manager import ReleaseManager
from funnel.serving.server import ReleaseStatusRPCs
from funnel.serving.service import Service, create_service, run_service
from funnel.v1 import ranking_pb2, ranking_pb2_grpc
from ranking_service.config import RankingServiceConfig
from ranking_service.core import Ranker

SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name


class RankingServicer(ReleaseStatusRPCs, ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, ranker: Ranker) -> None:
        self.ranker = ranker
        self.service, self.releases = "ranking", ranker.releases

    def Rank(self, request: ranking_pb2.RankRequest, context: grpc.ServicerContext) -> ranking_pb2.RankResponse:
        ranked = self.ranker.rank(
            request.release_id, request.user.user_id, request.item_ids, request.user.history_item_ids
        )
        ratings = ranked.ratings.tolist() if ranked.ratings is not None else []
        return ranking_pb2.RankResponse(release_id=ranked.release_id, scores=ranked.scores.tolist(), ratings=ratings)

    def RankBatch(
        self, request: ranking_pb2.RankBatchRequest, context: grpc.ServicerContext
    ) -> ranking_pb2.RankBatchResponse:
        queries = [(q.user.user_id, q.item_ids, q.user.history_item_ids) for q in request.queries]
        ranked = self.ranker.rank_batch(request.release_id, queries)
        return ranking_pb2.RankBatchResponse(
            release_id=request.release_id,
            results=[
                ranking_pb2.RankResult(
                    scores=r.scores.tolist(), ratings=r.ratings.tolist() if r.ratings is not None else []
                )
                for r in ranked
            ],
        )


def create_server(
    config: RankingServiceConfig, releases: ReleaseManager[RankingRelease] | None = None
) -> Service[RankingRelease]:
    """Build (not start) the ranking service; see funnel.serving.service.create_service."""
    metrics = config.new_metrics("ranking")

    def register(server: grpc.Server, releases: ReleaseManager[RankingRelease]) -> None:
        servicer = RankingServicer(Ranker(releases, observe=metrics.phase_observer()))
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)

    return create_service(
        config, "ranking", RankingRelease, register, [SERVICE_NAME], releases=releases, metrics=metrics
    )


def serve(argv: list[str] | None = None) -> None:
    run_service("ranking", parse_config(RankingServiceConfig, argv), create_server)
