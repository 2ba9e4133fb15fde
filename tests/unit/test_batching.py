"""The gateway's coalescer: lone requests go out at once, concurrent ones share calls, each gets its own answer."""

from __future__ import annotations

import threading
import time

import numpy as np
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


def batch_of_three(coalescer: Coalescer, call: SlowDouble) -> None:
    """Drive ``coalescer`` (max_in_flight=1) through a batch of three: three requests queue behind a hung one."""
    call.gate.clear()
    leader = threading.Thread(target=coalescer.submit, args=("r1", 0, 5))
    leader.start()
    while len(call.batches) < 1:
        time.sleep(0.005)
    followers = [threading.Thread(target=coalescer.submit, args=("r1", q, 5)) for q in (1, 2, 3)]
    for thread in followers:
        thread.start()
    while len(coalescer._pending["r1"]) < 3:
        time.sleep(0.005)
    call.gate.set()
    for thread in (leader, *followers):
        thread.join(10)
    assert call.batches[-1] == [1, 2, 3]


def test_a_window_never_delays_light_traffic() -> None:
    call = SlowDouble()
    coalescer = Coalescer(call, max_in_flight=1, window=30.0)
    started = time.perf_counter()
    assert [coalescer.submit("r1", q, timeout=60) for q in (1, 2)] == [2, 4]  # each the only one: batches of one
    assert time.perf_counter() - started < 5


def test_a_window_gathers_as_many_requests_as_the_previous_batch_without_waiting_it_out() -> None:
    call = SlowDouble()
    coalescer = Coalescer(call, max_batch=8, max_in_flight=1, window=30.0)
    batch_of_three(coalescer, call)
    started = time.perf_counter()
    answers = run_concurrently(coalescer, [4, 5, 6])
    assert answers == {4: 8, 5: 10, 6: 12}
    assert sorted(call.batches[-1]) == [4, 5, 6] and len(call.batches) == 3
    assert time.perf_counter() - started < 5  # the third request ended the gathering, not the 30 s window


def test_a_window_that_gathers_fewer_lowers_the_next_batchs_aim() -> None:
    call = SlowDouble()
    coalescer = Coalescer(call, max_in_flight=1, window=1.0)
    batch_of_three(coalescer, call)
    started = time.perf_counter()
    assert coalescer.submit("r1", 7, timeout=60) == 14  # aims for three, waits out the window alone
    alone = time.perf_counter() - started
    assert coalescer.submit("r1", 8, timeout=60) == 16  # aims for one: goes at once
    assert alone >= 0.9 and time.perf_counter() - started - alone < alone


def test_a_window_never_outlasts_the_requests_deadline() -> None:
    call = SlowDouble()
    coalescer = Coalescer(call, max_in_flight=1, window=30.0)
    batch_of_three(coalescer, call)
    started = time.perf_counter()
    assert coalescer.submit("r1", 4, timeout=0.05) == 8
    assert time.perf_counter() - started < 5


def test_a_leader_whose_request_another_leaders_batch_took_waits_for_that_answer() -> None:
    call = SlowDouble(delay=0.5)
    coalescer = Coalescer(call, max_batch=8, max_in_flight=2, window=30.0)
    coalescer._last_batch["r1"] = 2  # a batch of two went before: both requests below lead, aiming for two
    started, cpu = time.perf_counter(), time.process_time()
    answers = run_concurrently(coalescer, [1, 2])
    assert answers == {1: 2, 2: 4}
    assert [sorted(batch) for batch in call.batches] == [[1, 2]]  # one batch; the other leader sent nothing
    assert time.perf_counter() - started < 5  # did not wait out its window
    assert time.process_time() - cpu < 0.25  # nor spun through the batch's 0.5 s


def test_requests_holding_equal_arrays_stay_apart() -> None:
    call = SlowDouble()
    call.gate.clear()  # the first batch hangs; two requests with equal arrays queue behind it
    coalescer: Coalescer = Coalescer(call, max_in_flight=1)
    threading.Thread(target=coalescer.submit, args=("r1", np.array([1, 2]), 5)).start()
    while len(call.batches) < 1:
        time.sleep(0.005)
    patient = threading.Thread(target=coalescer.submit, args=("r1", np.array([3, 4]), 5))
    patient.start()
    while len(coalescer._pending["r1"]) < 1:
        time.sleep(0.005)
    with pytest.raises(StageUnavailable, match="no answer within"):
        coalescer.submit("r1", np.array([3, 4]), timeout=0.1)  # withdraws itself, not its equal neighbour
    assert len(coalescer._pending["r1"]) == 1
    call.gate.set()
    patient.join(10)


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


def test_a_finished_batch_hands_its_place_to_a_follower_never_to_a_request_already_leading() -> None:
    call = SlowDouble()
    call.gate.clear()  # the first batch hangs
    coalescer = Coalescer(call, max_batch=8, max_in_flight=2, window=30.0)
    first = threading.Thread(target=coalescer.submit, args=("r1", 1, 10))
    first.start()
    while len(call.batches) < 1:
        time.sleep(0.005)
    coalescer._last_batch["r1"] = 3  # the next leader gathers three
    answers = {}
    gatherer = threading.Thread(target=lambda: answers.update({2: coalescer.submit("r1", 2, 10)}))
    gatherer.start()  # leads the second place, gathering
    while not coalescer._pending.get("r1"):
        time.sleep(0.005)
    call.gate.set()  # the first batch ends with only a leader waiting: its place goes back
    first.join(10)
    assert coalescer._in_flight["r1"] == 1
    answers.update(run_concurrently(coalescer, [3, 4]))  # the gatherer's batch fills up and goes
    gatherer.join(10)
    assert answers == {2: 4, 3: 6, 4: 8} and coalescer._in_flight["r1"] == 0  # no place lost
