"""Blue-green under live load: publish → candidate 50% → promote → bad release refused → roll back, zero failures.

Each phase lasts until the load has made a given number of requests in it, not for a given time, so a slow machine
makes the test slower, not different."""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.cli import stack
from funnel.client import AdminClient
from funnel.release.store import INDEX_DIR, ArtifactStore
from funnel.v1 import common_pb2
from tests.helpers import RELEASE, ROOT, TEST_USERS, Load, Sample, clone_release, trainer_command, wait_for

CLIENTS = 12
USERS = [str(u) for u in range(1, 201)]  # the users of the test release


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def p99(samples: list[Sample]) -> float:
    return float(np.percentile([s.latency_ms for s in samples], 99)) if samples else float("nan")


@pytest.mark.timeout(1800)  # a trainer job runs beside 12 clients of load on 2 cores: ~6 min alone, more when shared
def test_blue_green_rollout_under_load(artifact_root: Path, tmp_path: Path) -> None:
    root = artifact_root  # this test's own: test-r1, stable
    store = ArtifactStore(root)
    services = stack.start_stack(root, tmp_path / "logs")
    marks: dict[str, float] = {}
    try:
        rss_one_release = {name: peak_rss_mb(s.process.pid)[0] for name, s in services.items()}
        admin = AdminClient(services["gateway"].admin_address)
        with Load(services["gateway"].address, USERS, CLIENTS) as load:
            load.wait_for_requests(100, 0.0, "in the steady state")
            marks["publish"] = time.monotonic()
            r2 = "test-r2"
            job = subprocess.run(  # the trainer job: retrain the ranker, evaluate, gate, publish, start the rollout
                trainer_command(
                    root,
                    "--max-users",
                    str(TEST_USERS),
                    "--epochs",
                    "2",
                    "--only",
                    "ranker",
                    "--release-id",
                    r2,
                    "--admin-target",
                    services["gateway"].admin_address,
                    "--rollout-fraction",
                    "0.5",
                ),
                cwd=ROOT,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
            # Same data as test-r1, which was given every held-out rating: the gate has nothing fair to compare on.
            assert f"gate skipped: stable release {RELEASE} was given every held-out interaction" in job.stdout
            assert store.rollout().candidate == r2
            wait_for(lambda: any(s.release == r2 for s in load.samples[-50:]), 180, "the candidate to get traffic")
            marks["split"] = time.monotonic()
            wait_for(  # enough of the 200 users seen during the split to measure their share
                lambda: len({s.user for s in load.between(marks["split"], float("inf"))}) > 150,
                120,
                "150 users during the split",
            )
            marks["promote"] = time.monotonic()
            assert admin.promote(r2).stable == r2
            marks["promoted"] = time.monotonic()  # the gateway has switched: every request sent from now on gets r2
            load.wait_for_requests(100, marks["promoted"], "after the promotion")

            def mismatched_index(directory: Path) -> None:
                meta_path = directory / INDEX_DIR / "index.json"
                meta = json.loads(meta_path.read_text())
                meta["candidate_tower_fingerprint"] = "f" * 64
                meta_path.write_text(json.dumps(meta))

            r3 = clone_release(store, r2, "test-r3-bad", mismatched_index)  # checksums valid, towers mismatched
            marks["bad"] = time.monotonic()
            admin.start_rollout(r3, 0.5)
            wait_for(
                lambda: any(
                    r.release_id == r3 and r.state == common_pb2.RELEASE_STATE_FAILED
                    for svc in admin.status().services
                    for r in svc.releases
                ),
                180,
                "retrieval to refuse the bad release",
            )
            with pytest.raises(grpc.RpcError) as refused:
                admin.promote(r3)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "retrieval" in refused.value.details()
            r4 = clone_release(store, r2, "test-r4-corrupt", lambda d: None)
            (store.releases_dir / r4 / "catalog.jsonl").write_text("tampered\n")
            with pytest.raises(grpc.RpcError) as corrupt:
                admin.start_rollout(r4, 0.5)
            assert corrupt.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "checksum mismatch" in corrupt.value.details()
            load.wait_for_requests(100, marks["bad"], "while the bad releases are refused")
            marks["rollback"] = time.monotonic()
            assert admin.rollback().candidate is None
            load.wait_for_requests(100, marks["rollback"], "after the rollback")
            marks["end"] = time.monotonic()
        admin.close()
        memory = {name: peak_rss_mb(s.process.pid) for name, s in services.items()}
    finally:
        codes = stack.stop_stack(services)
    assert codes == {"gateway": 0, "ranking": 0, "retrieval": 0}

    samples = load.samples
    failures = [s for s in samples if s.code != "OK"]
    assert not failures, f"{len(failures)} failed requests, first: {failures[:3]}"
    degraded = [(round(s.at - marks["publish"], 2), s.degraded) for s in samples if s.degraded]
    assert not degraded, f"{len(degraded)} degraded (seconds after publish, reasons): {degraded[:5]}"
    mixed = [s for s in samples if s.stages != (s.release, s.release)]
    assert not mixed, f"stages disagreed with the release: {mixed[:3]}"
    assert not [s for s in samples if s.release in (r3, r4)], "a bad release served"

    split = load.between(marks["split"], marks["promote"])
    by_user: dict[str, set[str]] = defaultdict(set)
    for s in split:
        by_user[s.user].add(s.release)
    assert all(len(releases) == 1 for releases in by_user.values()), "a user flipped between releases"
    user_share = sum(releases == {r2} for releases in by_user.values()) / len(by_user)
    request_share = sum(s.release == r2 for s in split) / len(split)
    assert len(by_user) > 100 and abs(user_share - 0.5) < 0.15, (len(by_user), user_share)
    after_promote = load.between(marks["promoted"], marks["end"])
    assert after_promote and all(s.release == r2 for s in after_promote), "a request sent after the promotion got r1"

    steady = load.between(0, marks["publish"])
    swaps = load.between(marks["publish"], marks["end"])
    duration = samples[-1].at - samples[0].at
    print(
        json.dumps(
            {
                "requests": len(samples),
                "rps": round(len(samples) / duration, 1),
                "clients": CLIENTS,
                "failed": len(failures),
                "split_users": len(by_user),
                "candidate_user_share": round(user_share, 3),
                "candidate_request_share": round(request_share, 3),
                "p50_ms_steady": round(float(np.percentile([s.latency_ms for s in steady], 50)), 1),
                "p99_ms_steady": round(p99(steady), 1),
                "p99_ms_during_swaps": round(p99(swaps), 1),
                "rss_mb_one_release": {k: round(v) for k, v in rss_one_release.items()},
                "peak_rss_mb": {k: round(v[1]) for k, v in memory.items()},
            }
        )
    )
