"""The benchmark's processes: spawned load generators driving an echo server, and a pinned echo process.

Throughput is not asserted: how many requests fit in a window depends on the machine, not on the harness.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.echo import EchoProcess, create_server, echo_once
from bench.loadgen import Target, run_load


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
