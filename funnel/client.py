"""A client for the gateway's AdminService, used by the `funnel rollout` CLI and the trainer job."""

from __future__ import annotations

import grpc

from funnel.release.store import RolloutState
from funnel.v1 import admin_pb2, admin_pb2_grpc

ADMIN_TOKEN_HEADER = "authorization"


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

    def _call(self, method: str, request: object) -> object:
        return getattr(self._stub, method)(request, timeout=self._timeout, metadata=self._metadata)

    def status(self) -> admin_pb2.GetRolloutStatusResponse:
        return self._call("GetRolloutStatus", admin_pb2.GetRolloutStatusRequest())

    def start_rollout(self, release_id: str, fraction: float) -> RolloutState:
        request = admin_pb2.StartRolloutRequest(release_id=release_id, fraction=fraction)
        return rollout_state(self._call("StartRollout", request).rollout)

    def set_fraction(self, fraction: float) -> RolloutState:
        request = admin_pb2.SetCandidateFractionRequest(fraction=fraction)
        return rollout_state(self._call("SetCandidateFraction", request).rollout)

    def promote(self, release_id: str = "") -> RolloutState:
        return rollout_state(self._call("Promote", admin_pb2.PromoteRequest(release_id=release_id)).rollout)

    def rollback(self) -> RolloutState:
        return rollout_state(self._call("Rollback", admin_pb2.RollbackRequest()).rollout)
