"""Two replicas per stage behind one gateway (multi-address targets), real processes on loopback: a replica killed
under load costs no request, and a replica that joins during a rollout never causes a mixed answer or a failure,
and holds promotion back until it has the candidate."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from funnel.cli.stack import ServiceProcess, free_port, start_service, stop_process, wait_serving
from funnel.client import AdminClient
from funnel.release.store import ArtifactStore
from funnel.v1 import common_pb2
from tests.helpers import RELEASE, Load, clone_release, wait_for

STAGES = {"retrieval": 2, "ranking": 2}
READY = common_pb2.RELEASE_STATE_READY
USERS = [str(u) for u in range(1, 201)]  # the users of the test release


@contextmanager
def replicated_stack(
    root: Path, logs: Path, start_now: dict[str, int]
) -> Iterator[tuple[dict[str, list[ServiceProcess]], dict[str, list[str]]]]:
    """Each stage's replicas on ports of their own, the first ``start_now[stage]`` started, and one gateway whose
    stage targets list every replica's address (``ipv4:a,b``). ``stack["late"]`` lists the addresses not started;
    every process started, here or by the test (appended to its stage), is stopped at the end."""
    addresses = {stage: [f"127.0.0.1:{free_port()}" for _ in range(n)] for stage, n in STAGES.items()}
    stack: dict[str, list[ServiceProcess]] = {stage: [] for stage in [*STAGES, "gateway"]}
    targets = [f"--{stage}-target=ipv4:{','.join(addresses[stage])}" for stage in STAGES]
    try:
        for stage, count in start_now.items():
            for i, address in enumerate(addresses[stage][:count]):
                stack[stage].append(start_service(stage, address, root, logs / f"{stage}{i}"))
        for replica in [r for stage in STAGES for r in stack[stage]]:
            wait_serving(replica, 180)
        stack["gateway"].append(start_service("gateway", f"127.0.0.1:{free_port()}", root, logs, args=targets))
        wait_serving(stack["gateway"][0], 60)
        yield stack, {stage: addresses[stage][start_now[stage] :] for stage in STAGES}
    finally:
        for replica in [r for replicas in stack.values() for r in replicas]:
            stop_process(replica.process)


def test_killing_a_replica_of_each_stage_under_load_fails_no_request(artifact_root: Path, tmp_path: Path) -> None:
    with replicated_stack(artifact_root, tmp_path / "logs", STAGES) as (stack, _):
        with Load(stack["gateway"][0].address, USERS) as load:
            wait_for(lambda: len(load.samples) >= 50, 120, "answers before the kill")
            for stage in STAGES:
                stack[stage][0].process.send_signal(signal.SIGKILL)
            before = len(load.samples)
            wait_for(lambda: len(load.samples) >= before + 100, 120, "answers after the kill")
    assert load.failures() == []
    assert load.mixed() == []
    degraded = sum(bool(a.degraded) for a in load.samples)
    print(f"{len(load.samples)} answers, {degraded} degraded, across the kill of one replica per stage")


def test_a_replica_joining_mid_rollout_gets_no_candidate_traffic_and_holds_promotion_back(
    artifact_root: Path, tmp_path: Path
) -> None:
    store = ArtifactStore(artifact_root)
    candidate = clone_release(store, RELEASE, "test-r2")
    with replicated_stack(artifact_root, tmp_path / "logs", {"retrieval": 2, "ranking": 1}) as (stack, late):
        gateway, joining = stack["gateway"][0].address, late["ranking"][0]
        with Load(gateway, USERS) as load, AdminClient(gateway) as admin:
            admin.start_rollout(candidate, 0.5)
            wait_for(lambda: any(a.release == candidate for a in load.samples), 120, "candidate traffic")
            stack["ranking"].append(start_service("ranking", joining, artifact_root, tmp_path / "logs" / "late"))

            def joined_without_candidate() -> bool:
                """The new replica answers its status and does not hold the candidate ready yet."""
                for replica in admin.status().services:
                    if replica.target == joining and not replica.error:
                        assert candidate not in {r.release_id for r in replica.releases if r.state == READY}
                        return True
                return False

            wait_for(joined_without_candidate, 120, "the new replica to answer")
            refusals: list[str] = []

            def promoted() -> bool:
                try:
                    admin.promote(candidate)
                except grpc.RpcError as refused:
                    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
                    refusals.append(refused.details())
                    return False
                return True

            wait_for(promoted, 180, "promotion once the new replica holds the candidate")
            served = len(load.samples)
            wait_for(lambda: len(load.samples) >= served + 40, 120, "answers after promotion")
    assert refusals and f"ranking replica {joining}" in refusals[0], refusals
    assert load.failures() == []
    assert load.mixed() == []
    assert {a.release for a in load.samples[-20:]} == {candidate}
