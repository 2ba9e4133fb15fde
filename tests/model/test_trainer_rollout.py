"""The trainer job starts a rollout through a real AdminService (a recording one, in this process on port 0)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from funnel.release.store import ArtifactStore, RolloutState
from funnel.v1 import admin_pb2, admin_pb2_grpc
from tests.helpers import JOB_STABLE, csv_spec, synthetic_dataset
from trainer import __main__ as cli
from trainer.pipeline import PipelineConfig, run

pytestmark = pytest.mark.slow  # the job trains (TensorFlow)
STABLE = JOB_STABLE


@pytest.fixture
def store(job_store: ArtifactStore) -> ArtifactStore:
    """A private copy of the store one trainer job run bootstrapped (tests/conftest.py: job_root)."""
    return job_store


def _channels(store: ArtifactStore) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.channels_dir.iterdir()}


class RecordingAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Records StartRollout calls; answers like the gateway would, or refuses with ``refusal``. Promote refuses as
    "not ready" ``not_ready`` times first, like a gateway whose replicas are still loading the candidate."""

    def __init__(self, refusal: str = "", not_ready: int = 0) -> None:
        self.calls: list[tuple[admin_pb2.StartRolloutRequest, dict[str, str]]] = []
        self.promotes: list[str] = []
        self.refusal, self.not_ready = refusal, not_ready
        self.candidate = ""

    def GetRolloutStatus(self, request: admin_pb2.GetRolloutStatusRequest, context: grpc.ServicerContext):
        state = admin_pb2.RolloutState(stable_release_id=STABLE, candidate_release_id=self.candidate)
        return admin_pb2.GetRolloutStatusResponse(rollout=state)

    def Promote(self, request: admin_pb2.PromoteRequest, context: grpc.ServicerContext):
        self.promotes.append(request.release_id)
        if len(self.promotes) <= self.not_ready:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"candidate {request.release_id} is not ready on x")
        return admin_pb2.PromoteResponse(rollout=admin_pb2.RolloutState(stable_release_id=request.release_id))

    def StartRollout(self, request: admin_pb2.StartRolloutRequest, context: grpc.ServicerContext):
        self.calls.append((request, dict(context.invocation_metadata())))
        if self.refusal:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.refusal)
        self.candidate = request.release_id
        state = admin_pb2.RolloutState(
            stable_release_id=STABLE, candidate_release_id=request.release_id, candidate_fraction=request.fraction
        )
        return admin_pb2.StartRolloutResponse(rollout=state)


@contextlib.contextmanager
def admin_server(servicer: RecordingAdmin) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_rollout_is_started_through_the_admin_service(store):
    admin, channels = RecordingAdmin(), _channels(store)
    with admin_server(admin) as target:
        config = PipelineConfig(
            store.root,
            only="index",
            release_id="r-new",
            admin_target=target,
            admin_token="s3cret",
            rollout_fraction=0.25,
        )
        result = run(config, dataset=synthetic_dataset())
    assert result.rollout == RolloutState(STABLE, "r-new", 0.25) and not result.stable
    [(request, metadata)] = admin.calls
    assert (request.release_id, request.fraction, metadata["authorization"]) == ("r-new", 0.25, "Bearer s3cret")
    assert _channels(store) == channels  # the admin service, not the trainer, writes channels/


def test_cli_rollout_refusal_exits_4_and_names_the_published_release(store, tmp_path, capsys):
    admin = RecordingAdmin(refusal="release r-new is not ready on ranking")
    with admin_server(admin) as target:
        argv = [
            "--artifact-root",
            str(store.root),
            "--data",
            csv_spec(synthetic_dataset(later=8), tmp_path),  # the stable data and 8 newer ratings per user
            "--only",
            "index",
            "--release-id",
            "r-new",
            "--admin-target",
            target,
        ]
        assert cli.main(argv) == cli.EXIT_ROLLOUT_REFUSED
    assert capsys.readouterr().err == (
        f"trainer: error: release r-new is published, but the admin service at {target} refused to start its rollout: "
        "FAILED_PRECONDITION: release r-new is not ready on ranking\n"
    )
    assert "r-new" in store.list_releases() and store.get_channel("stable") == STABLE


def test_set_stable_on_a_live_store_is_a_rollout_promoted_once_every_replica_is_ready(store):
    admin, channels = RecordingAdmin(not_ready=1), _channels(store)
    with admin_server(admin) as target:
        config = PipelineConfig(store.root, only="index", release_id="r-new", set_stable=True, admin_target=target)
        result = run(config, dataset=synthetic_dataset())
    assert result.rollout == RolloutState("r-new", None, 0.0)
    [(request, _)] = admin.calls
    assert (request.release_id, request.fraction) == ("r-new", 0.0)  # loaded everywhere before any user sees it
    assert admin.promotes == ["r-new", "r-new"]  # refused while not ready, then promoted
    assert _channels(store) == channels  # the admin service, not the trainer, writes channels/


def test_set_stable_on_a_store_with_a_stable_release_needs_the_admin_api(store, capsys):
    releases = store.list_releases()
    argv = ["--artifact-root", str(store.root), "--only", "index", "--release-id", "r-new", "--set-stable"]
    assert cli.main(argv) == cli.EXIT_ROLLOUT_REFUSED
    err = capsys.readouterr().err
    assert f"already has stable release {STABLE}" in err and "--admin-target" in err and "funnel rollout" in err
    assert store.list_releases() == releases and store.get_channel("stable") == STABLE  # refused before training
