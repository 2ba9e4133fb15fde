"""Rollout control: the Admin core (start a rollout, change its fraction, promote, roll back) and its servicer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import grpc
from prometheus_client import Counter

from funnel.errors import FailedPrecondition
from funnel.release.store import ArtifactStore, RolloutState, validate_fraction, validate_release_id
from funnel.serving.manager import ReleaseManager
from funnel.serving.metrics import UNRECORDED, Unrecorded
from funnel.serving.server import release_statuses
from funnel.v1 import admin_pb2, admin_pb2_grpc
from gateway.clients import StageClient
from gateway.core import GatewayRelease, StageReadiness

log = logging.getLogger(__name__)


class Admin:
    """Changes rollout state in ``channels/`` after checking it is safe, then tells every stage to re-read it."""

    def __init__(
        self,
        store: ArtifactStore,
        releases: ReleaseManager[GatewayRelease],
        readiness: StageReadiness,
        stages: Sequence[StageClient],
        probe: Callable[[], None] = lambda: None,
        events: Counter | Unrecorded = UNRECORDED,
    ) -> None:
        """``probe`` refreshes ``readiness`` from every replica now: promotion never trusts a stale view; each
        change counts in ``events`` (by event name)."""
        self.store, self.releases, self.readiness, self.stages = store, releases, readiness, stages
        self._probe, self._events = probe, events
        self._lock = threading.Lock()  # one change at a time from this process

    def start_rollout(self, release_id: str, fraction: float) -> RolloutState:
        validate_release_id(release_id)
        validate_fraction(fraction)
        with self._lock:
            self.store.verify(release_id)  # NotFound, or ReleaseError for a partial or corrupt release
            if self.store.rollout().stable == release_id:
                raise FailedPrecondition(f"release {release_id} is already stable")
            self.store.set_candidate(release_id, fraction)
            log.info("rollout started: candidate %s at %.1f%% of users", release_id, fraction * 100)
            self._count("start")
            return self._propagate()

    def set_fraction(self, fraction: float) -> RolloutState:
        validate_fraction(fraction)
        with self._lock:
            candidate = self._candidate()
            self.store.set_candidate(candidate, fraction)
            log.info("candidate %s now at %.1f%% of users", candidate, fraction * 100)
            self._count("fraction")
            return self._propagate()

    def promote(self, expected: str = "") -> RolloutState:
        with self._lock:
            candidate = self._candidate()
            if expected and expected != candidate:
                raise FailedPrecondition(f"the candidate is {candidate}, not {expected}")
            self.store.verify(candidate)  # files changed since they loaded would fail every replica that restarts
            self._probe()
            missing = self.readiness.missing(candidate)
            if self.releases.channel("candidate") != candidate:
                missing.insert(0, "gateway")
            if missing:
                raise FailedPrecondition(
                    f"candidate {candidate} is not ready on {', '.join(missing)}; wait for it or roll back"
                )
            self.store.set_stable(candidate)  # stable and candidate name the same release for a moment
            self.store.clear_candidate()
            log.info("promoted %s to stable", candidate)
            self._count("promote")
            return self._propagate()

    def rollback(self) -> RolloutState:
        with self._lock:
            candidate = self._candidate()
            self.store.clear_candidate()
            log.info("rolled back candidate %s", candidate)
            self._count("rollback")
            return self._propagate()

    def _count(self, event: str) -> None:
        self._events.labels(event).inc()

    def _candidate(self) -> str:
        candidate = self.store.rollout().candidate
        if candidate is None:
            raise FailedPrecondition("no rollout is in progress (there is no candidate)")
        return candidate

    def _propagate(self) -> RolloutState:
        """Apply the change here at once and ask every stage replica to re-read channels now (they also poll)."""
        self.releases.reload()
        for stage in self.stages:
            for address, answer in stage.replicas.reload().items():
                if isinstance(answer, grpc.RpcError):
                    log.warning(
                        "%s replica %s did not take the reload (%s); it will see the change when it polls",
                        stage.stage,
                        address,
                        answer.code().name,
                    )
        return self.store.rollout()


def _state(rollout: RolloutState) -> admin_pb2.RolloutState:
    return admin_pb2.RolloutState(
        stable_release_id=rollout.stable or "",
        candidate_release_id=rollout.candidate or "",
        candidate_fraction=rollout.fraction,
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Thin gRPC layer over Admin (the server's TokenAuth interceptor guards it when a token is set)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def GetRolloutStatus(
        self, request: admin_pb2.GetRolloutStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetRolloutStatusResponse:
        services = [
            admin_pb2.ServiceReleases(service="gateway", releases=release_statuses(self.admin.releases.status()))
        ]
        for stage in self.admin.stages:
            answers = stage.replicas.statuses()
            if not answers:
                error = f"{stage.target} resolves to no address"
                services.append(admin_pb2.ServiceReleases(service=stage.stage, target=stage.target, error=error))
            for address, answer in sorted(answers.items()):
                if isinstance(answer, grpc.RpcError):
                    error = f"{answer.code().name}: {answer.details()}"
                    services.append(admin_pb2.ServiceReleases(service=stage.stage, target=address, error=error))
                else:
                    replica = admin_pb2.ServiceReleases(service=stage.stage, target=address, releases=answer.releases)
                    services.append(replica)
        return admin_pb2.GetRolloutStatusResponse(
            rollout=_state(self.admin.store.rollout()),
            services=services,
            published_release_ids=self.admin.store.list_releases(),
        )

    def StartRollout(
        self, request: admin_pb2.StartRolloutRequest, context: grpc.ServicerContext
    ) -> admin_pb2.StartRolloutResponse:
        rollout = self.admin.start_rollout(request.release_id, request.fraction)
        return admin_pb2.StartRolloutResponse(rollout=_state(rollout))

    def SetCandidateFraction(
        self, request: admin_pb2.SetCandidateFractionRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetCandidateFractionResponse:
        return admin_pb2.SetCandidateFractionResponse(rollout=_state(self.admin.set_fraction(request.fraction)))

    def Promote(self, request: admin_pb2.PromoteRequest, context: grpc.ServicerContext) -> admin_pb2.PromoteResponse:
        return admin_pb2.PromoteResponse(rollout=_state(self.admin.promote(request.release_id)))

    def Rollback(self, request: admin_pb2.RollbackRequest, context: grpc.ServicerContext) -> admin_pb2.RollbackResponse:
        return admin_pb2.RollbackResponse(rollout=_state(self.admin.rollback()))
