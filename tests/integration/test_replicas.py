"""Replicas behind one gateway (multi-address targets), real processes on loopback: a replica killed under load
costs no request; a replica that joins during a rollout serves only once it holds the candidate, and moves nobody;
a stage killed and restarted during a rollout keeps candidate users on the candidate."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from funnel.cli.stack import ServiceProcess, free_port, start_service, stop_process, wait_serving
from funnel.client import AdminClient
from funnel.release.store import ArtifactStore
from funnel.v1 import common_pb2, ranking_pb2_grpc
from tests.helpers import RELEASE, Load, clone_release, wait_for

STAGES = {"retrieval": 2, "ranking": 2}
READY = common_pb2.RELEASE_STATE_READY
USERS = [str(u) for u in range(1, 201)]  # the users of the test release


@contextmanager
def replicated_stack(
    root: Path, logs: Path, start_now: dict[str, int]
) -> Iterator[tuple[dict[str, list[ServiceProcess]], dict[str, list[str]]]]:
    """Each stage's replicas on ports of their own, the first ``start_now[stage]`` started, and one gateway whose
    stage targets list every replica's address (``ipv4:a,b``; its admin API at ``.admin_address``). The second
    value lists each stage's addresses not started; every process started, here or by the test (appended to its
    stage), is stopped at the end."""
    addresses = {stage: [f"127.0.0.1:{free_port()}" for _ in range(n)] for stage, n in STAGES.items()}
    stack: dict[str, list[ServiceProcess]] = {stage: [] for stage in [*STAGES, "gateway"]}
    admin = f"127.0.0.1:{free_port()}"
    targets = [f"--{stage}-target=ipv4:{','.join(addresses[stage])}" for stage in STAGES] + [f"--admin-address={admin}"]
    try:
        for stage, count in start_now.items():
            for i, address in enumerate(addresses[stage][:count]):
                stack[stage].append(start_service(stage, address, root, logs / f"{stage}{i}"))
        for replica in [r for stage in STAGES for r in stack[stage]]:
            wait_serving(replica, 180)
        stack["gateway"].append(start_service("gateway", f"127.0.0.1:{free_port()}", root, logs, args=targets))
        stack["gateway"][0].admin_address = admin
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


def test_a_replica_joining_mid_rollout_serves_only_once_it_holds_the_candidate_and_moves_nobody(
    artifact_root: Path, tmp_path: Path
) -> None:
    store = ArtifactStore(artifact_root)
    candidate = clone_release(store, RELEASE, "test-r2")
    with replicated_stack(artifact_root, tmp_path / "logs", {"retrieval": 2, "ranking": 1}) as (stack, late):
        gateway, joining = stack["gateway"][0].address, late["ranking"][0]
        with Load(gateway, USERS) as load, AdminClient(stack["gateway"][0].admin_address) as admin:
            admin.start_rollout(candidate, 0.5)
            wait_for(lambda: any(a.release == candidate for a in load.samples), 120, "candidate traffic")
            joined_at = time.monotonic()
            stack["ranking"].append(start_service("ranking", joining, artifact_root, tmp_path / "logs" / "late"))
            seen: list[tuple[bool, bool]] = []  # (serving, holds the candidate) each time the new replica answered

            def serving_with_candidate() -> bool:
                with grpc.insecure_channel(joining) as channel:
                    try:
                        status = ranking_pb2_grpc.RankingServiceStub(channel).GetStatus(
                            common_pb2.GetStatusRequest(), timeout=5
                        )
                    except grpc.RpcError:
                        return False
                held = candidate in {r.release_id for r in status.releases if r.state == READY}
                seen.append((status.serving, held))
                return status.serving

            wait_for(serving_with_candidate, 180, "the new replica to serve", interval=0.05)
            assert (False, False) in seen or (False, True) in seen, seen  # it answered before it served
            assert all(held for serving, held in seen if serving), seen  # and served only holding the candidate
            promoting = time.monotonic()
            admin.promote(candidate)
            served = len(load.samples)
            wait_for(lambda: len(load.samples) >= served + 40, 120, "answers after promotion")
    assert load.failures() == []
    assert load.mixed() == []
    # Nobody flipped: from the join to the promotion, each user got one release.
    during = load.between(joined_at, promoting)
    flipped = {a.user for a in during if a.release != candidate} & {a.user for a in during if a.release == candidate}
    assert flipped == set(), sorted(flipped)[:10]
    assert {a.release for a in load.samples[-20:]} == {candidate}


def test_candidate_users_stay_on_the_candidate_while_a_stage_is_killed_and_restarted(
    artifact_root: Path, tmp_path: Path
) -> None:
    store = ArtifactStore(artifact_root)
    candidate = clone_release(store, RELEASE, "test-r2")
    with replicated_stack(artifact_root, tmp_path / "logs", {"retrieval": 1, "ranking": 1}) as (stack, _):
        ranking = stack["ranking"][0]
        with Load(stack["gateway"][0].address, USERS) as load, AdminClient(stack["gateway"][0].admin_address) as admin:
            admin.start_rollout(candidate, 0.5)
            wait_for(lambda: len({a.user for a in load.samples if a.release == candidate}) >= 50, 120, "50 users")
            on_candidate = {a.user for a in load.samples if a.release == candidate}
            killed = time.monotonic()
            ranking.process.send_signal(signal.SIGKILL)
            ranking.process.wait()
            wait_for(lambda: any(a.degraded for a in load.samples[-5:]), 60, "degraded answers")
            time.sleep(3)  # the outage (a fault's length, not a bound on anything)
            stack["ranking"].append(start_service("ranking", ranking.address, artifact_root, tmp_path / "logs" / "r"))
            wait_serving(stack["ranking"][-1], 180)
            back = time.monotonic()
            wait_for(lambda: len([a for a in load.between(back, float("inf")) if not a.degraded]) >= 50, 120, "full")
    during = [a for a in load.between(killed, float("inf")) if a.user in on_candidate]
    moved = sorted({a.user for a in during if a.release != candidate})
    degraded = sum(bool(a.degraded) for a in during)
    print(f"{len(during)} answers to {len(on_candidate)} candidate users across the outage, {degraded} degraded")
    assert degraded > 0  # the outage was felt
    reasons = {reason for a in during for reason in a.degraded}
    assert reasons and not any("127.0.0.1" in reason for reason in reasons), reasons  # words, no addresses
    assert moved == [], f"{len(moved)} candidate users were sent to stable: {moved[:10]}"
    assert load.failures() == []
    assert load.mixed() == []
