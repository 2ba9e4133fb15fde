"""Python clients for the gateway: Recommend, and the AdminService used by `funnel rollout` and the trainer job."""

from __future__ import annotations

from typing import Any

import grpc

from funnel.release.store import RolloutState
from funnel.v1 import admin_pb2, admin_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc

ADMIN_TOKEN_HEADER = "authorization"


def recommend(
    gateway: str, user_id: str, k: int, release_id: str = "", include_seen: bool = False, timeout: float = 10.0
) -> gateway_pb2.RecommendResponse:
    """One Recommend call through the gateway at ``gateway``; raises grpc.RpcError with its status on refusal."""
    request = gateway_pb2.RecommendRequest(
        user=common_pb2.UserContext(user_id=user_id), k=k, release_id=release_id, exclude_seen=not include_seen
    )
    with grpc.insecure_channel(gateway) as channel:
        response: gateway_pb2.RecommendResponse = gateway_pb2_grpc.GatewayServiceStub(channel).Recommend(
            request, timeout=timeout
        )
    return response


def state_label(status: common_pb2.ReleaseStatus) -> str:
    """'loading', 'ready' or 'failed' for a ReleaseStatus (from ``state_name`` for services before the enum)."""
    if status.state == common_pb2.RELEASE_STATE_UNSPECIFIED:
        return status.state_name or "unknown"
    return common_pb2.ReleaseState.Name(status.state).removeprefix("RELEASE_STATE_").lower()


def format_release(status: common_pb2.ReleaseStatus) -> str:
    """One line per release a service holds: id, state, channels and error."""
    return f"    {status.release_id} {state_label(status)} {','.join(status.channels)} {status.error}".rstrip()


def rollout_state(message: admin_pb2.RolloutState) -> RolloutState:
    return RolloutState(
        message.stable_release_id or None, message.candidate_release_id or None, message.candidate_fraction
    )


class AdminClient:
    """Rollout control over gRPC; raises grpc.RpcError with the server's status and message on refusal."""

    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._metadata = [(ADMIN_TOKEN_HEADER, f"Bearer {token}")] if token else []
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> admin_pb2.GetRolloutStatusResponse:
        response: admin_pb2.GetRolloutStatusResponse = self._stub.GetRolloutStatus(
            admin_pb2.GetRolloutStatusRequest(), timeout=self._timeout, metadata=self._metadata
        )
        return response

    def start_rollout(self, release_id: str, fraction: float) -> RolloutState:
        request = admin_pb2.StartRolloutRequest(release_id=release_id, fraction=fraction)
        return self._rollout(self._stub.StartRollout, request)

    def set_fraction(self, fraction: float) -> RolloutState:
        return self._rollout(self._stub.SetCandidateFraction, admin_pb2.SetCandidateFractionRequest(fraction=fraction))

    def promote(self, release_id: str = "") -> RolloutState:
        return self._rollout(self._stub.Promote, admin_pb2.PromoteRequest(release_id=release_id))

    def rollback(self) -> RolloutState:
        return self._rollout(self._stub.Rollback, admin_pb2.RollbackRequest())

    def _rollout(self, method: Any, request: Any) -> RolloutState:
        """Call a rollout-changing method; every one answers with the rollout state it left."""
        return rollout_state(method(request, timeout=self._timeout, metadata=self._metadata).rollout)
