"""The benchmark's processes: spawned load generators driving an echo server or a peer's client, a pinned echo
process, and the three-hop pass-through floor.

Throughput is not asserted: how many requests fit in a window depends on the machine, not on the harness.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from bench.echo import EchoProcess, create_server, echo_once
from bench.loadgen import ECHO_METHOD, Target, run_load
from bench.passthrough import MODULES as PASSTHROUGH
from funnel.cli.stack import runs_module, start_stack, stop_stack
from funnel.client import recommend
from funnel.release.files import read_popularity
from funnel.release.store import ArtifactStore


@pytest.fixture()
def echo_address() -> Iterator[str]:
    server, port = create_server("127.0.0.1:0", max_workers=4)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_load_generator_drives_the_echo_from_a_spawned_process(echo_address: str) -> None:
    result = run_load(Target("echo", echo_address, payload=b"x" * 40), concurrency=2, duration=0.5, processes=1)
    assert result.processes == 1 and result.concurrency == 2
    assert result.errors == 0 and result.requests > 0 and len(result.latencies_ms) == result.requests
    assert 0 < result.p50 <= result.p99 and result.rps == result.requests / 0.5


def test_load_generator_runs_on_the_cpus_it_is_given(echo_address: str) -> None:
    last = max(os.sched_getaffinity(0))
    target = Target("echo", echo_address, payload=b"x")
    assert run_load(target, concurrency=1, duration=0.2, processes=1).cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert run_load(target, concurrency=1, duration=0.2, processes=1, cpus={last}).cpus == (last,)


def test_load_generator_counts_failures_by_status() -> None:
    result = run_load(
        Target("echo", "127.0.0.1:1", payload=b"x", timeout=0.2), concurrency=1, duration=1.0, processes=1, warmup=0
    )
    assert result.requests == 0 and result.errors >= 1
    assert set(result.error_codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def test_a_pinned_echo_process_runs_every_thread_on_its_cpus(tmp_path: Path) -> None:
    first = min(os.sched_getaffinity(0))
    with EchoProcess(tmp_path / "echo.log", max_workers=2, cpus={first}) as echo:
        assert echo_once(echo.address, b"ping") == b"ping"
        threads = os.listdir(f"/proc/{echo.pid}/task")
        assert len(threads) > 1 and all(os.sched_getaffinity(int(t)) == {first} for t in threads)


def echo_client(target: Target) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A peer client for the test: echoes one user id a call over raw gRPC."""
    channel = grpc.insecure_channel(target.address)
    echo = channel.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)

    def make_call(thread: int) -> Callable[[int], None]:
        def call(n: int) -> None:
            user = target.user_ids[n % len(target.user_ids)].encode()
            if echo(user, timeout=target.timeout) != user:
                raise ValueError(f"expected the echo of {user!r}")

        return call

    return make_call, channel.close


def test_load_generator_drives_a_peer_through_its_own_client(echo_address: str) -> None:
    target = Target("peer", echo_address, user_ids=("u1", "u2"), client=f"{__name__}:echo_client")
    result = run_load(target, concurrency=2, duration=0.5, processes=1)
    assert result.errors == 0 and result.requests > 0
    with pytest.raises(ValueError, match="client"):
        Target("peer", echo_address, user_ids=("u1",))


def test_the_pass_through_floor_serves_funnel_s_gateway_over_canned_stages(artifact_root: Path, tmp_path: Path) -> None:
    stack = start_stack(artifact_root, tmp_path / "logs", modules=PASSTHROUGH)
    try:
        for service in ("retrieval", "ranking"):
            assert runs_module(stack[service].process.pid, PASSTHROUGH[service])
        answer = recommend(stack["gateway"].address, "1", 10)
        popular = read_popularity(ArtifactStore(artifact_root).release_dir(answer.release_id)).item_ids[:100]
        assert not answer.degraded and len(answer.items) == 10
        assert {item.item_id for item in answer.items} <= set(popular.tolist())
        result = run_load(Target("recommend", stack["gateway"].address, user_ids=("1", "2")), 2, 0.5, processes=1)
        assert result.errors == 0 and result.flags.get("degraded", 0) == 0
    finally:
        stop_stack(stack)
