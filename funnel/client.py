"""Python clients for the gateway: Recommend, and the AdminService used by `funnel rollout` and the trainer job."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from funnel.release.store import RolloutState
from funnel.tls import channel_credentials, open_channel
from funnel.v1 import admin_pb2, admin_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc

ADMIN_TOKEN_HEADER = "authorization"
CLIENT_TLS_PREFIX = "FUNNEL_CLIENT_TLS"


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a TLS server: the CA that signed it, and a certificate of its own for mutual TLS.
    All empty: plaintext."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClientTls:
        """From FUNNEL_CLIENT_TLS_CA, FUNNEL_CLIENT_TLS_CERT and FUNNEL_CLIENT_TLS_KEY."""
        return cls(*(environ.get(f"{CLIENT_TLS_PREFIX}_{name}", "") for name in ("CA", "CERT", "KEY")))

    def connect(self, target: str) -> grpc.Channel:
        return open_channel(target, channel_credentials(self.ca, self.cert, self.key, prefix=CLIENT_TLS_PREFIX))


PLAINTEXT = ClientTls()


def recommend(
    gateway: str,
    user_id: str,
    k: int,
    release_id: str = "",
    include_seen: bool = False,
    timeout: float = 10.0,
    tls: ClientTls = PLAINTEXT,
) -> gateway_pb2.RecommendResponse:
    """One Recommend call through the gateway at ``gateway``; raises grpc.RpcError with its status on refusal."""
    request = gateway_pb2.RecommendRequest(
        user=common_pb2.UserContext(user_id=user_id), k=k, release_id=release_id, exclude_seen=not include_seen
    )
    with tls.connect(gateway) as channel:
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

    def __init__(
        self, target: str, token: str | None = None, timeout: float = 30.0, tls: ClientTls = PLAINTEXT
    ) -> None:
        self._channel = tls.connect(target)
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


def promote_when_ready(
    admin: AdminClient, release_id: str, timeout: float = 300.0, poll: float = 1.0, fraction: float = 0.0
) -> RolloutState:
    """Make ``release_id`` stable the one safe way on a live store: as the candidate (at ``fraction`` of users;
    0 sends none), promoted once every replica of every stage holds it ready. Raises grpc.RpcError on a refusal
    other than "not ready yet", or TimeoutError naming what is still missing after ``timeout`` seconds."""
    if admin.status().rollout.candidate_release_id != release_id:
        admin.start_rollout(release_id, fraction)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.promote(release_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or "not ready" not in (exc.details() or ""):
                raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"release {release_id} not promoted after {timeout:.0f}s: {exc.details()}") from None
        time.sleep(poll)
