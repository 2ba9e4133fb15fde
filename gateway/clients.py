"""gRPC clients for the retrieval and ranking stages, turning transport failures into StageUnavailable."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from funnel.errors import FailedPrecondition, FunnelError, InvalidArgument, NotFound
from funnel.serving.server import ready_release_ids
from funnel.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from gateway.core import StageCandidates, StageReadiness, StageScores, StageUnavailable

# Errors that mean "this request cannot be served as asked": passed to the caller, never papered over.
_PASS_THROUGH: dict[grpc.StatusCode, type[FunnelError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


def stage_channel(target: str) -> grpc.Channel:
    """A channel that balances round-robin over every address the target resolves to (one per replica).

    Reconnect backoff is capped at one second, so a stage that (re)starts is used again within about a second;
    gRPC's default grows to minutes, and calls fail fast (degrading the answer) for all of that time.
    """
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.service_config", config),
            ("grpc.enable_retries", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )


def _call(stage: str, method: Callable[..., Any], request: Any, timeout: float) -> Any:
    if timeout <= 0:
        raise StageUnavailable(stage, "the request's deadline left no time for this stage")
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code in _PASS_THROUGH:
            raise _PASS_THROUGH[code](f"{stage}: {details}") from None
        raise StageUnavailable(stage, f"{code.name}: {details}") from None


class StageClient:
    """What the gateway asks of any stage besides its main RPC: status (for readiness) and reload."""

    stage = ""

    def __init__(self, channel: grpc.Channel, stub_class: Callable[[grpc.Channel], Any], target: str = "") -> None:
        self.target = target
        self._stub = stub_class(channel)

    def status(self, timeout: float = 2.0) -> common_pb2.GetStatusResponse:
        response: common_pb2.GetStatusResponse = self._stub.GetStatus(common_pb2.GetStatusRequest(), timeout=timeout)
        return response

    def reload(self, timeout: float = 2.0) -> common_pb2.ReloadResponse:
        response: common_pb2.ReloadResponse = self._stub.Reload(common_pb2.ReloadRequest(), timeout=timeout)
        return response


class GrpcRetrieval(StageClient):
    stage = "retrieval"

    def __init__(self, channel: grpc.Channel, target: str = "") -> None:
        super().__init__(channel, retrieval_pb2_grpc.RetrievalServiceStub, target)

    def retrieve_batch(self, release_id: str, queries: list[Any], timeout: float) -> list[StageCandidates]:
        """One RetrieveBatch for queries with user_id, num_candidates, exclude_seen and history attributes."""
        request = retrieval_pb2.RetrieveBatchRequest(
            release_id=release_id,
            queries=[
                retrieval_pb2.RetrieveQuery(
                    user=common_pb2.UserContext(user_id=q.user_id, history_item_ids=q.history.tolist()),
                    num_candidates=q.num_candidates,
                    exclude_seen=q.exclude_seen,
                )
                for q in queries
            ],
        )
        response = _call("retrieval", self._stub.RetrieveBatch, request, timeout)
        if len(response.results) != len(queries):
            raise StageUnavailable("retrieval", f"expected {len(queries)} results, got {len(response.results)}")
        return [
            StageCandidates(
                response.release_id,
                np.asarray(r.item_ids, dtype=np.int64),
                np.asarray(r.scores, dtype=np.float32),
                r.cold_start,
            )
            for r in response.results
        ]


class GrpcRanking(StageClient):
    stage = "ranking"

    def __init__(self, channel: grpc.Channel, target: str = "") -> None:
        super().__init__(channel, ranking_pb2_grpc.RankingServiceStub, target)

    def rank_batch(
        self, release_id: str, queries: list[tuple[str, np.ndarray, np.ndarray]], timeout: float
    ) -> list[StageScores]:
        """One RankBatch for (user_id, item_ids, history) queries; an empty history means the stored one."""
        request = ranking_pb2.RankBatchRequest(
            release_id=release_id,
            queries=[
                ranking_pb2.RankQuery(
                    user=common_pb2.UserContext(user_id=user_id, history_item_ids=history.tolist()),
                    item_ids=items.tolist(),
                )
                for user_id, items, history in queries
            ],
        )
        response = _call("ranking", self._stub.RankBatch, request, timeout)
        if [len(r.scores) for r in response.results] != [len(items) for _, items, _ in queries]:
            raise StageUnavailable("ranking", "the batch's scores do not match its queries")
        return [
            StageScores(
                response.release_id,
                np.asarray(r.scores, dtype=np.float32),
                np.asarray(r.ratings, dtype=np.float32) if len(r.ratings) else None,
            )
            for r in response.results
        ]


def probe_readiness(stages: list[StageClient], readiness: StageReadiness) -> None:
    """Record which releases each stage reports ready; a stage that does not answer has none."""
    for client in stages:
        try:
            ready = ready_release_ids(client.status())
        except grpc.RpcError:
            readiness.update(client.stage, [], answered=False)
        else:
            readiness.update(client.stage, ready)
