"""The stack as deployed with docker-compose: stages scaled on their own, a rollout through the trainer container.

Run by `make compose-test` (images built, dockerd up); skipped otherwise. The stack is a real compose project
with its own name and volume, published on a free loopback port, and brought down with its volume at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from funnel.cli.stack import free_port, health_status
from funnel.client import AdminClient, recommend
from funnel.paths import PROJECT_ROOT
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif(os.environ.get("FUNNEL_COMPOSE_TEST") != "1", reason="run by make compose-test"),
]
PROJECT = "funnel-compose-test"
SCALE = {"retrieval": 3, "ranking": 2}
# small, quick releases: the point is the deployment, not the model
TRAIN = ["python", "-m", "trainer", "--max-users", "300", "--epochs", "2", "--no-gate", "--no-refit"]


def compose(*args: str, env: dict[str, str], timeout: float = 1800, check: bool = True) -> str:
    done = subprocess.run(
        ["docker-compose", "-p", PROJECT, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, dict[str, str]]]:
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "FUNNEL_GATEWAY_PORT": str(port),
        "FUNNEL_ADMIN_PORT": str(admin_port),
        "FUNNEL_ADMIN_ADDRESS": "0.0.0.0:50054",  # open to the trainer container, so the token is required
        "FUNNEL_ADMIN_TOKEN": secrets.token_hex(16),
        "FUNNEL_REQUEST_LOG_INTERVAL": "2",
        "COMPOSE_PROFILES": "observability",  # and Prometheus
        "FUNNEL_PROMETHEUS_PORT": str(free_port()),
    }
    compose("down", "-v", env=env, check=False)
    try:
        started = time.monotonic()
        compose("run", "--rm", "trainer", *TRAIN, "--unless-stable", "--set-stable", env=env)
        trained = time.monotonic()
        scale = [f"--scale={stage}={n}" for stage, n in SCALE.items()]
        compose("up", "-d", *scale, env=env)
        gateway = f"127.0.0.1:{port}"
        wait_for(lambda: health_status(gateway) == "SERVING", 300, "the gateway to report SERVING", interval=2)
        serving = time.monotonic() - trained
        print(f"first release trained in {trained - started:.0f}s; the stack served {serving:.0f}s later")
        yield gateway, env
    finally:
        print(compose("logs", "--tail=20", env=env, check=False)[-6000:])
        compose("down", "-v", env=env, check=False)


def served_counts(env: dict[str, str], service: str) -> dict[str, int]:
    """Recommendation calls (not probes) each replica of ``service`` answered OK, from its request tally."""
    counts: dict[str, int] = {}
    for line in compose("logs", "--no-color", service, env=env).splitlines():
        match = re.match(r"(\S+)\s+\|.* served (?:RetrieveBatch|RankBatch) release=\S+ status=OK count=(\d+)", line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + int(match.group(2))
    return counts


def test_scaled_stack_serves_from_every_replica_and_rolls_out_a_release(stack: tuple[str, dict[str, str]]) -> None:
    gateway, env = stack
    first = recommend(gateway, "42", 10)
    assert len(first.items) == 10 and not first.degraded
    stable = first.release_id
    assert first.retrieval_release_id == first.ranking_release_id == stable
    for user in range(1, 61):
        response = recommend(gateway, str(user), 10)
        assert response.release_id == stable and not response.degraded
    for service, replicas in SCALE.items():
        every = f"every {service} replica to serve"
        wait_for(lambda s=service, n=replicas: len(served_counts(env, s)) == n, 60, every, interval=2)

    # a replica added to the running stack gets traffic within seconds (connection age caps make clients re-resolve)
    compose("up", "-d", "--no-recreate", *[f"--scale={s}={n + (s == 'retrieval')}" for s, n in SCALE.items()], env=env)
    added = time.monotonic()
    users = iter(range(61, 10**6))

    def all_four_served() -> bool:
        for _ in range(10):
            assert not recommend(gateway, str(next(users) % 943 + 1), 10).degraded
        return len(served_counts(env, "retrieval")) == SCALE["retrieval"] + 1

    wait_for(all_four_served, 120, "the added retrieval replica to serve", interval=2)
    print(f"an added retrieval replica served {time.monotonic() - added:.0f}s after `up --scale` returned (healthy)")
    compose("run", "--rm", "trainer", *TRAIN, "--admin-target", "gateway:50054", "--rollout-fraction", "0.5", env=env)
    admin_address = f"127.0.0.1:{env['FUNNEL_ADMIN_PORT']}"
    with AdminClient(admin_address, "wrong") as intruder, pytest.raises(grpc.RpcError) as refused:
        intruder.status()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with AdminClient(admin_address, env["FUNNEL_ADMIN_TOKEN"]) as admin:
        candidate = admin.status().rollout.candidate_release_id
        assert candidate and candidate != stable

        def promoted() -> bool:
            try:
                admin.promote(candidate)
            except grpc.RpcError as refused:  # refused, naming the replica, until every replica holds it
                assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
                return False
            return True

        wait_for(promoted, 300, f"every replica to hold {candidate}", interval=2)
        listed = [s for s in admin.status().services if s.service in SCALE]
        expected = {**SCALE, "retrieval": SCALE["retrieval"] + 1}
        assert sorted(s.service for s in listed) == sorted(s for s, n in expected.items() for _ in range(n))
    after = [recommend(gateway, str(user), 10) for user in range(1, 21)]
    assert {r.release_id for r in after} == {candidate}
    assert all(r.retrieval_release_id == r.ranking_release_id == candidate and not r.degraded for r in after)


def test_published_port_is_loopback_only(stack: tuple[str, dict[str, str]]) -> None:
    _, env = stack
    published = compose("port", "gateway", "50051", env=env).strip()
    assert published.startswith("127.0.0.1:"), published


def test_the_image_runs_as_a_non_root_user() -> None:
    image = os.environ.get("FUNNEL_IMAGE", "funnel:latest")
    user = subprocess.run(["docker", "run", "--rm", image, "id", "-u"], capture_output=True, text=True, timeout=120)
    assert user.stdout.strip() not in ("", "0"), user.stderr


def test_compose_file_is_valid() -> None:
    assert Path(PROJECT_ROOT / "docker-compose.yml").is_file()
    compose("config", "-q", env=dict(os.environ))


def test_prometheus_scrapes_every_replica(stack: tuple[str, dict[str, str]]) -> None:
    gateway, env = stack
    for user in range(1, 21):
        recommend(gateway, str(user), 10)
    prometheus = f"http://127.0.0.1:{env['FUNNEL_PROMETHEUS_PORT']}/api/v1/query?"
    running = {s: len(compose("ps", "-q", s, env=env).split()) for s in ("gateway", "retrieval", "ranking")}

    def query(promql: str) -> dict[str, float]:
        with urllib.request.urlopen(prometheus + urllib.parse.urlencode({"query": promql}), timeout=10) as response:
            result = json.load(response)["data"]["result"]
        return {r["metric"].get("job", ""): float(r["value"][1]) for r in result}

    def every_replica_up() -> bool:
        try:
            return query("count by (job) (up == 1)") == {job: float(n) for job, n in running.items()}
        except OSError:
            return False

    wait_for(every_replica_up, 120, f"Prometheus to scrape {running}", interval=2)
    wait_for(lambda: query("sum(funnel_requests_total)").get("", 0) >= 20, 60, "the requests counted", interval=2)
