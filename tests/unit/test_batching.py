"""The gateway's coalescer: lone requests go out at once, concurrent ones share calls, each gets its own answer."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.batching import Coalescer
from gateway.core import StageUnavailable


class SlowDouble:
    """A batch call answering 2 × each query after ``delay`` seconds, recording every batch it was given."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.batches: list[list[int]] = []
        self.timeouts: list[float] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key: str, queries: list[int], timeout: float) -> list[int]:
        self.batches.append(list(queries))
        self.timeouts.append(timeout)
        self.gate.wait(10)
        time.sleep(self.delay)
        if self.fail:
            raise StageUnavailable("retrieval", "UNAVAILABLE")
        return [2 * q for q in queries]


def run_concurrently(coalescer: Coalescer, queries: list[int]) -> dict[int, object]:
    answers: dict[int, object] = {}

    def client(q: int) -> None:
        try:
            answers[q] = coalescer.submit("r1", q, timeout=5)
        except Exception as exc:
            answers[q] = exc

    threads = [threading.Thread(target=client, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return answers


def test_a_lone_request_goes_out_at_once() -> None:
    call = SlowDouble()
    started = time.perf_counter()
    assert Coalescer(call).submit("r1", 21, timeout=1) == 42
    assert call.batches == [[21]] and time.perf_counter() - started < 0.05


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    call = SlowDouble(delay=0.05)
    answers = run_concurrently(Coalescer(call, max_batch=8, max_in_flight=1), list(range(40)))
    assert answers == {q: 2 * q for q in range(40)}
    assert sorted(q for batch in call.batches for q in batch) == list(range(40))  # each query sent exactly once
    assert len(call.batches) < 40 and max(map(len, call.batches)) > 1
    assert max(map(len, call.batches)) <= 8


def test_a_failed_batch_fails_each_of_its_requests() -> None:
    answers = run_concurrently(Coalescer(SlowDouble(delay=0.02, fail=True), max_in_flight=1), list(range(10)))
    assert all(isinstance(a, StageUnavailable) for a in answers.values()) and len(answers) == 10


def test_a_waiting_request_times_out_on_its_own() -> None:
    call = SlowDouble()
    call.gate.clear()  # the first batch hangs
    coalescer = Coalescer(call, max_in_flight=1)
    leader = threading.Thread(target=coalescer.submit, args=("r1", 1, 5))
    leader.start()
    time.sleep(0.05)
    with pytest.raises(StageUnavailable, match="no answer within"):
        coalescer.submit("r1", 2, timeout=0.1)
    call.gate.set()
    leader.join(5)
    assert call.batches == [[1]]  # the timed-out query was withdrawn, never sent
    assert coalescer.submit("r1", 3, timeout=1) == 6  # and nothing is left stuck


def test_a_window_lets_the_requests_right_behind_a_leader_join_its_batch() -> None:
    call = SlowDouble()
    coalescer = Coalescer(call, max_batch=8, max_in_flight=1, window=0.5)  # far longer than starting 3 threads
    answers = run_concurrently(coalescer, [1, 2, 3])
    assert answers == {1: 2, 2: 4, 3: 6}
    assert [sorted(batch) for batch in call.batches] == [[1, 2, 3]]


def test_a_window_never_outlasts_the_requests_deadline() -> None:
    call = SlowDouble()
    started = time.perf_counter()
    assert Coalescer(call, window=30.0).submit("r1", 4, timeout=0.05) == 8
    assert time.perf_counter() - started < 5


def test_time_spent_waiting_for_a_batch_counts_against_the_requests_timeout() -> None:
    call = SlowDouble()
    call.gate.clear()  # the first batch hangs while the second request waits behind it
    coalescer = Coalescer(call, max_in_flight=1)
    leader = threading.Thread(target=coalescer.submit, args=("r1", 1, 5))
    leader.start()
    while len(call.batches) < 1:
        time.sleep(0.005)
    follower = threading.Thread(target=coalescer.submit, args=("r1", 2, 1.0))
    follower.start()
    while not coalescer._pending["r1"]:  # the follower is queued: its deadline is set
        time.sleep(0.005)
    time.sleep(0.3)
    call.gate.set()
    leader.join(5)
    follower.join(5)
    assert call.batches == [[1], [2]]
    assert call.timeouts[1] <= 0.7  # not the 1.0 s it was submitted with
