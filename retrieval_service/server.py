"""The retrieval gRPC service: a thin servicer over Retriever, plus create_server() and serve()."""

from __future__ import annotations

import grpc

from funnel.release.retrieval import RetrievalRelease
from funnel.serving.config import parse_config
from funnel.serving.manager import ReleaseManager
from funnel.serving.server import ReleaseStatusRPCs
from funnel.serving.service import Service, create_service, run_service
from funnel.v1 import retrieval_pb2, retrieval_pb2_grpc
from retrieval_service.config import RetrievalServiceConfig
from retrieval_service.core import Retriever

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


class RetrievalServicer(ReleaseStatusRPCs, retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.service, self.releases = "retrieval", retriever.releases

    def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        found = self.retriever.retrieve(
            request.release_id,
            request.user.user_id,
            request.num_candidates,
            request.exclude_seen,
            request.user.history_item_ids,
        )
        return retrieval_pb2.RetrieveResponse(
            release_id=found.release_id,
            item_ids=found.item_ids.tolist(),
            scores=found.scores.tolist(),
            cold_start=found.cold_start,
        )

    def RetrieveBatch(
        self, request: retrieval_pb2.RetrieveBatchRequest, context: grpc.ServicerContext
    ) -> retrieval_pb2.RetrieveBatchResponse:
        found = self.retriever.retrieve_batch(
            request.release_id,
            [(q.user.user_id, q.num_candidates, q.exclude_seen, q.user.history_item_ids) for q in request.queries],
        )
        return retrieval_pb2.RetrieveBatchResponse(
            release_id=request.release_id,
            results=[
                retrieval_pb2.RetrieveResult(
                    item_ids=c.item_ids.tolist(), scores=c.scores.tolist(), cold_start=c.cold_start
                )
                for c in found
            ],
        )


def create_server(
    config: RetrievalServiceConfig, releases: ReleaseManager[RetrievalRelease] | None = None
) -> Service[RetrievalRelease]:
    """Build (not start) the retrieval service; see funnel.serving.service.create_service."""
    metrics = config.new_metrics("retrieval")

    def register(server: grpc.Server, releases: ReleaseManager[RetrievalRelease]) -> None:
        servicer = RetrievalServicer(Retriever(releases, observe=metrics.phase_observer()))
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)

    return create_service(
        config, "retrieval", RetrievalRelease, register, [SERVICE_NAME], releases=releases, metrics=metrics
    )


def serve(argv: list[str] | None = None) -> None:
    run_service("retrieval", parse_config(RetrievalServiceConfig, argv), create_server)
