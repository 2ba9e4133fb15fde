"""The gateway gRPC service: a thin servicer over Gateway, plus create_server() and serve()."""

from __future__ import annotations

import grpc

from funnel.errors import FunnelError
from funnel.serving.config import parse_config
from funnel.serving.interceptors import TokenAuth
from funnel.serving.manager import ReleaseManager
from funnel.serving.metrics import Metrics
from funnel.serving.server import ReleaseStatusRPCs
from funnel.serving.service import AdminEndpoint, Service, create_service, release_manager, run_service
from funnel.serving.workers import Periodic
from funnel.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from gateway.admin import Admin, AdminServicer
from gateway.batching import BatchedRanking, BatchedRetrieval
from gateway.clients import GrpcRanking, GrpcRetrieval, StageClient, probe_readiness, stage_channel
from gateway.config import GatewayServiceConfig
from gateway.core import Deadlines, Gateway, GatewayRelease, Recommendation, Router, StageReadiness

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def outcome(found: Recommendation) -> str:
    """How a Recommend answer went, for funnel_requests_total: ok, degraded_<stage> (the first stage that failed),
    or cold_start."""
    if found.degraded_reasons:
        return "degraded_" + found.degraded_reasons[0].split(" ", 1)[0]
    return "cold_start" if found.cold_start else "ok"


class GatewayServicer(ReleaseStatusRPCs, gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway, metrics: Metrics) -> None:
        self.gateway, self.metrics = gateway, metrics
        self._stage_duration = {stage: metrics.stage_duration.labels(stage) for stage in ("retrieval", "ranking")}
        self.service, self.releases = "gateway", gateway.router.releases

    def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecommendResponse:
        try:
            found = self.gateway.recommend(
                request.user.user_id,
                request.k,
                release_id=request.release_id,
                exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
                num_candidates=request.num_candidates,
                time_remaining=context.time_remaining(),
                history=request.user.history_item_ids,
            )
        except FunnelError as exc:
            self.metrics.requests.labels("", exc.code.name).inc()
            raise
        self.metrics.requests.labels(found.release_id, outcome(found)).inc()
        self.metrics.request_duration.labels(found.release_id).observe(found.total_ms / 1000)
        self._stage_duration["retrieval"].observe(found.retrieval_ms / 1000)
        if found.ranking_release_id or found.ranking_ms:
            self._stage_duration["ranking"].observe(found.ranking_ms / 1000)
        return gateway_pb2.RecommendResponse(
            release_id=found.release_id,
            items=[
                gateway_pb2.RecommendedItem(
                    item_id=i.item_id,
                    title=i.title,
                    score=i.score,
                    retrieval_score=i.retrieval_score,
                    year=i.year,
                    genres=i.genres,
                    predicted_rating=i.predicted_rating,
                )
                for i in found.items
            ],
            retrieval_release_id=found.retrieval_release_id,
            ranking_release_id=found.ranking_release_id,
            timings=gateway_pb2.StageTimings(
                retrieval_ms=found.retrieval_ms, ranking_ms=found.ranking_ms, total_ms=found.total_ms
            ),
            degraded=bool(found.degraded_reasons),
            degraded_reasons=found.degraded_reasons,
            cold_start=found.cold_start,
        )


class ReadinessProbe:
    """Every ``interval`` seconds, asks each stage which releases it holds ready (a candidate gets traffic only when
    all do); the first time every stage has answered, health is re-evaluated at once."""

    def __init__(
        self,
        stages: list[StageClient],
        readiness: StageReadiness,
        releases: ReleaseManager[GatewayRelease],
        interval: float,
    ) -> None:
        self.stages, self.readiness, self.releases = stages, readiness, releases
        self._periodic = Periodic("stage-readiness", interval, self.probe)

    def probe(self) -> None:
        warm_before = self.readiness.all_answered_once()
        probe_readiness(self.stages, self.readiness)
        if self.readiness.all_answered_once() and not warm_before:
            self.releases.refresh()  # re-evaluates health now that the stages are reachable

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()


def create_server(
    config: GatewayServiceConfig, releases: ReleaseManager[GatewayRelease] | None = None
) -> Service[GatewayRelease]:
    """Build (not start) the gateway, with its AdminService on a server of its own (config.admin_address) behind
    the token check; see funnel.serving.service.create_service."""
    credentials, metrics = config.stage_credentials(), config.new_metrics("gateway")
    retrieval = GrpcRetrieval(
        stage_channel(config.retrieval_target, credentials), config.retrieval_target, credentials, metrics
    )
    ranking = GrpcRanking(
        stage_channel(config.ranking_target, credentials), config.ranking_target, credentials, metrics
    )
    readiness = StageReadiness([retrieval.stage, ranking.stage])
    window = config.batch_window_ms / 1000
    releases = releases or release_manager(config, "gateway", GatewayRelease)
    probe = ReadinessProbe([retrieval, ranking], readiness, releases, config.poll_interval)
    gateway = Gateway(
        Router(releases, readiness),
        BatchedRetrieval(retrieval, config.max_batch, config.max_in_flight, window),
        BatchedRanking(ranking, config.max_batch, config.max_in_flight, window),
        Deadlines(config.retrieval_timeout, config.ranking_timeout),
    )
    admin = Admin(releases.store, releases, readiness, [retrieval, ranking], probe.probe, metrics.rollout_events)

    def register(server: grpc.Server, releases: ReleaseManager[GatewayRelease]) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(gateway, metrics), server)

    def register_admin(server: grpc.Server) -> None:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(admin), server)

    return create_service(
        config,
        "gateway",
        GatewayRelease,
        register,
        [SERVICE_NAME],
        releases=releases,
        workers=[probe],
        warm=readiness.all_answered_once,
        admin=AdminEndpoint(
            config.admin_address,
            register_admin,
            [ADMIN_SERVICE_NAME],
            [TokenAuth(config.admin_token, [ADMIN_SERVICE_NAME])],
        ),
        metrics=metrics,
    )


def serve(argv: list[str] | None = None) -> None:
    run_service("gateway", parse_config(GatewayServiceConfig, argv), create_server)
