"""The gateway's coalescer: lone requests go out at once, concurrent ones share calls, each gets its own answer.

Nothing here depends on how fast the machine is. The coalescer reads the test's clock (`Clock`: it moves only when
a test moves it), a batch call hangs until the test lets it go, and the tests wait for states (a batch sent,
requests queued), never for time to pass. Real time passes only where a request's own timeout is what is tested;
other real-time limits are hang guards that a passing run never reaches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from funnel.serving import tracing
from gateway import batching
from gateway.batching import Coalescer
from gateway.core import StageUnavailable

GUARD = 30.0  # seconds: how long a test waits for a state before failing instead of hanging


class Clock:
    """gateway.batching's ``time`` module, stopped: ``monotonic()`` moves only by ``advance()``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(batching, "time", clock)
    return clock


class Double:
    """A batch call answering 2 × each query, recording every batch, the timeout it was given and the thread that
    sent it; it hangs while ``gate`` is clear."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list] = []
        self.timeouts: list[float] = []
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self._sent = threading.Condition()

    def __call__(self, key: str, queries: list, timeout: float) -> list:
        with self._sent:
            self.batches.append(list(queries))
            self.timeouts.append(timeout)
            self.threads.append(threading.get_ident())
            self._sent.notify_all()
        assert self.gate.wait(GUARD), "the test never let the batch go"
        if self.fail:
            raise StageUnavailable("retrieval", "UNAVAILABLE")
        return [2 * q for q in queries]

    def wait_sent(self, n: int) -> None:
        with self._sent:
            assert self._sent.wait_for(lambda: len(self.batches) >= n, GUARD), f"{n} batches never went out"


class Gathering(threading.Condition):
    """Replaces a coalescer's join condition to record each timed wait of a gathering leader. With ``elapse``, such a
    wait returns at once as if its time ran out (the clock moves on by it) instead of blocking."""

    def __init__(self, coalescer: Coalescer, clock: Clock, elapse: bool = False) -> None:
        super().__init__(coalescer._lock)
        self.clock, self.elapse = clock, elapse
        self.waits: list[float | None] = []
        coalescer._joined = self

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.elapse and timeout is not None:
            self.clock.advance(timeout)
            return False
        return super().wait(timeout)


def wait_queued(coalescer: Coalescer, n: int) -> None:
    """Block until ``n`` requests are queued under "r1" (every join notifies the coalescer's join condition)."""
    joined = coalescer._joined
    deadline = time.monotonic() + GUARD
    with joined:
        while len(coalescer._pending.get("r1", ())) < n:
            assert time.monotonic() < deadline, f"{n} requests never queued"
            threading.Condition.wait(joined, 0.1)  # the base class's wait: not a gathering wait


def answering(coalescer: Coalescer, answers: dict[int, object]) -> Callable[[int], None]:
    """A client thread's body: submit one query, record its answer (or the exception it got) in ``answers``."""

    def client(q: int) -> None:
        try:
            answers[q] = coalescer.submit("r1", q, timeout=60)
        except Exception as exc:
            answers[q] = exc

    return client


def run_concurrently(coalescer: Coalescer, queries: list[int]) -> dict[int, object]:
    """Submit each query from its own thread; each query's answer, or the exception it got."""
    answers: dict[int, object] = {}
    client = answering(coalescer, answers)
    threads = [threading.Thread(target=client, args=(q,), daemon=True) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    return answers


def queued_behind_a_hung_batch(coalescer: Coalescer, call: Double, first: int, rest: list[int]) -> dict[int, object]:
    """``first`` goes out alone and hangs; ``rest`` are submitted concurrently and queue behind it; once all of them
    are queued the call goes on. Each query's answer, or the exception it got (``coalescer``: max_in_flight=1)."""
    call.gate.clear()
    answers: dict[int, object] = {}
    client = answering(coalescer, answers)
    leader = threading.Thread(target=client, args=(first,), daemon=True)
    leader.start()
    call.wait_sent(1)
    followers = [threading.Thread(target=client, args=(q,), daemon=True) for q in rest]
    for thread in followers:
        thread.start()
    wait_queued(coalescer, len(rest))
    call.gate.set()
    for thread in (leader, *followers):
        thread.join(GUARD)
    return answers


def batch_of_three(coalescer: Coalescer, call: Double) -> None:
    """Drive ``coalescer`` (max_in_flight=1) through a batch of three: three requests queue behind a hung one."""
    assert queued_behind_a_hung_batch(coalescer, call, 0, [1, 2, 3]) == {0: 0, 1: 2, 2: 4, 3: 6}
    assert sorted(call.batches[-1]) == [1, 2, 3]


def test_a_lone_request_goes_out_at_once(clock: Clock) -> None:
    call = Double()
    coalescer = Coalescer(call)
    gathering = Gathering(coalescer, clock)
    assert coalescer.submit("r1", 21, timeout=1) == 42
    assert call.batches == [[21]] and call.threads == [threading.get_ident()]  # sent by the request's own thread
    assert gathering.waits == [] and call.timeouts == [1.0]  # no wait of any kind: its whole timeout was left


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    call = Double()
    coalescer = Coalescer(call, max_batch=8, max_in_flight=1)
    answers = queued_behind_a_hung_batch(coalescer, call, 0, list(range(1, 40)))
    assert answers == {q: 2 * q for q in range(40)}
    assert sorted(q for batch in call.batches for q in batch) == list(range(40))  # each query sent exactly once
    assert [len(batch) for batch in call.batches] == [1, 8, 8, 8, 8, 7]  # the 39 queued ones in batches of <= 8


def test_a_failed_batch_fails_each_of_its_requests() -> None:
    call = Double(fail=True)
    answers = queued_behind_a_hung_batch(Coalescer(call, max_in_flight=1), call, 0, list(range(1, 10)))
    assert sorted(answers) == list(range(10)) and [len(batch) for batch in call.batches] == [1, 9]
    assert all(isinstance(a, StageUnavailable) and a.stage == "retrieval" for a in answers.values()), answers


def test_a_waiting_request_times_out_on_its_own() -> None:
    call = Double()
    call.gate.clear()  # the first batch hangs
    coalescer = Coalescer(call, max_in_flight=1)
    leader = threading.Thread(target=coalescer.submit, args=("r1", 1, 5), daemon=True)
    leader.start()
    call.wait_sent(1)
    with pytest.raises(StageUnavailable, match=r"no answer within 0\.100s"):
        coalescer.submit("r1", 2, timeout=0.1)
    call.gate.set()
    leader.join(GUARD)
    assert call.batches == [[1]]  # the timed-out query was withdrawn, never sent
    assert coalescer.submit("r1", 3, timeout=1) == 6  # and nothing is left stuck


def test_a_window_never_delays_light_traffic(clock: Clock) -> None:
    call = Double()
    coalescer = Coalescer(call, max_in_flight=1, window=30.0)
    gathering = Gathering(coalescer, clock)
    assert [coalescer.submit("r1", q, timeout=60) for q in (1, 2)] == [2, 4]
    assert call.batches == [[1], [2]] and gathering.waits == []  # each the only one: a batch of one, no wait


def test_a_window_gathers_as_many_requests_as_the_previous_batch_without_waiting_it_out(clock: Clock) -> None:
    call = Double()
    coalescer = Coalescer(call, max_batch=8, max_in_flight=1, window=30.0)
    gathering = Gathering(coalescer, clock)
    batch_of_three(coalescer, call)
    assert gathering.waits == []
    answers = run_concurrently(coalescer, [4, 5, 6])
    assert answers == {4: 8, 5: 10, 6: 12}
    assert sorted(call.batches[-1]) == [4, 5, 6] and len(call.batches) == 3
    # The leader waited for the others to join; the clock stood still, so the window never ran out: the third
    # request joining ended the gathering.
    assert gathering.waits and set(gathering.waits) == {30.0}


def test_a_window_that_gathers_fewer_lowers_the_next_batchs_aim(clock: Clock) -> None:
    call = Double()
    coalescer = Coalescer(call, max_in_flight=1, window=1.0)
    gathering = Gathering(coalescer, clock, elapse=True)
    batch_of_three(coalescer, call)
    assert coalescer.submit("r1", 7, timeout=60) == 14  # aims for three, waits out the window alone
    assert gathering.waits == [1.0]
    assert coalescer.submit("r1", 8, timeout=60) == 16  # aims for one: goes at once
    assert gathering.waits == [1.0] and call.batches[-2:] == [[7], [8]]


def test_a_window_never_outlasts_the_requests_deadline(clock: Clock) -> None:
    call = Double()
    coalescer = Coalescer(call, max_in_flight=1, window=30.0)
    gathering = Gathering(coalescer, clock, elapse=True)
    batch_of_three(coalescer, call)
    assert coalescer.submit("r1", 4, timeout=0.05) == 8
    assert gathering.waits == [
        pytest.approx(0.05)
    ]  # it gathered for as long as the request could wait, not the 30 s window


def test_a_leader_whose_request_another_leaders_batch_took_waits_for_that_answer() -> None:
    call = Double()
    call.gate.clear()  # the batch hangs while the other leader finds nothing to send
    coalescer = Coalescer(call, max_batch=8, max_in_flight=2, window=30.0)
    coalescer._last_batch["r1"] = 2  # a batch of two went before: both requests below lead, aiming for two
    runs: list[bool] = []
    ran = threading.Condition()
    run_batch = coalescer._run_batch

    def counted(key: str) -> bool:
        sent = run_batch(key)
        with ran:
            runs.append(sent)
            ran.notify_all()
        return sent

    coalescer._run_batch = counted  # type: ignore[method-assign]
    answers: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda q=q: answers.update({q: coalescer.submit("r1", q, 60)}), daemon=True)
        for q in (1, 2)
    ]
    for thread in threads:
        thread.start()
    call.wait_sent(1)
    with ran:
        assert ran.wait_for(lambda: False in runs, GUARD), "the other leader never looked for a batch to send"
    call.gate.set()
    for thread in threads:
        thread.join(GUARD)
    assert answers == {1: 2, 2: 4}
    assert [sorted(batch) for batch in call.batches] == [[1, 2]]  # one batch; the other leader sent nothing
    assert sorted(runs) == [False, True]  # and, finding nothing, it waited for the answer: no spinning


def test_requests_holding_equal_arrays_stay_apart() -> None:
    call = Double()
    call.gate.clear()  # the first batch hangs; two requests with equal arrays queue behind it
    coalescer: Coalescer = Coalescer(call, max_in_flight=1)
    threading.Thread(target=coalescer.submit, args=("r1", np.array([1, 2]), 60), daemon=True).start()
    call.wait_sent(1)
    patient = threading.Thread(target=coalescer.submit, args=("r1", np.array([3, 4]), 60), daemon=True)
    patient.start()
    wait_queued(coalescer, 1)
    with pytest.raises(StageUnavailable, match="no answer within"):
        coalescer.submit("r1", np.array([3, 4]), timeout=0.1)  # withdraws itself, not its equal neighbour
    assert len(coalescer._pending["r1"]) == 1
    call.gate.set()
    patient.join(GUARD)
    assert not patient.is_alive() and [len(batch) for batch in call.batches] == [1, 1]  # the neighbour went alone


def test_time_spent_waiting_for_a_batch_counts_against_the_requests_timeout(clock: Clock) -> None:
    call = Double()
    call.gate.clear()  # the first batch hangs while the second request waits behind it
    coalescer = Coalescer(call, max_in_flight=1)
    leader = threading.Thread(target=coalescer.submit, args=("r1", 1, 50), daemon=True)
    leader.start()
    call.wait_sent(1)
    follower = threading.Thread(target=coalescer.submit, args=("r1", 2, 40), daemon=True)
    follower.start()
    wait_queued(coalescer, 1)  # the follower is queued: its deadline is set
    clock.advance(15.0)  # the first batch takes 15 s
    call.gate.set()
    leader.join(GUARD)
    follower.join(GUARD)
    assert call.batches == [[1], [2]]
    assert call.timeouts == [50.0, 25.0]  # the follower's batch went out with what was left of its 40 s


def test_a_finished_batch_hands_its_place_to_a_follower_never_to_a_request_already_leading() -> None:
    call = Double()
    call.gate.clear()  # the first batch hangs
    coalescer = Coalescer(call, max_batch=8, max_in_flight=2, window=30.0)
    first = threading.Thread(target=coalescer.submit, args=("r1", 1, 60), daemon=True)
    first.start()
    call.wait_sent(1)
    coalescer._last_batch["r1"] = 3  # the next leader gathers three
    answers = {}
    gatherer = threading.Thread(target=lambda: answers.update({2: coalescer.submit("r1", 2, 60)}), daemon=True)
    gatherer.start()  # leads the second place, gathering (the clock stands still: its window never runs out)
    wait_queued(coalescer, 1)
    call.gate.set()  # the first batch ends with only a leader waiting: its place goes back
    first.join(GUARD)
    assert coalescer._in_flight["r1"] == 1
    answers.update(run_concurrently(coalescer, [3, 4]))  # the gatherer's batch fills up and goes
    gatherer.join(GUARD)
    assert answers == {2: 4, 3: 6, 4: 8} and coalescer._in_flight["r1"] == 0  # no place lost
    assert [sorted(batch) for batch in call.batches] == [[1], [2, 3, 4]]


def test_a_batch_carries_the_trace_context_of_every_request_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exported = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("funnel"))
    tracer = provider.get_tracer("test")
    requests: dict[int, SpanContext] = {}
    carried: list[tuple[list[SpanContext], list[tuple[str, str]]]] = []
    call = Double()

    def traced_call(key: str, queries: list, timeout: float) -> list:
        with tracing.client_span("funnel.v1.RetrievalService/RetrieveBatch", "stage:1") as metadata:
            carried.append((list(tracing.batch_members.get()), metadata))
            return call(key, queries, timeout)

    coalescer = Coalescer(traced_call, max_batch=8, max_in_flight=1)

    def client(q: int) -> None:
        with tracer.start_as_current_span(f"request {q}") as span:
            requests[q] = span.get_span_context()
            coalescer.submit("r1", q, timeout=60)

    call.gate.clear()
    leader = threading.Thread(target=client, args=(0,), daemon=True)
    leader.start()
    call.wait_sent(1)
    followers = [threading.Thread(target=client, args=(q,), daemon=True) for q in (1, 2, 3)]
    for thread in followers:
        thread.start()
    wait_queued(coalescer, 3)
    call.gate.set()
    for thread in (leader, *followers):
        thread.join(GUARD)
    members, metadata = carried[-1]
    queued = {requests[q].span_id for q in (1, 2, 3)}
    assert {member.span_id for member in members} == queued
    batch = [s for s in exported.get_finished_spans() if s.name.endswith("RetrieveBatch")][-1]
    assert batch.parent is not None and batch.parent.span_id in queued  # a child of the request that led it ...
    linked = {link.context.span_id for link in batch.links}
    assert linked == queued - {batch.parent.span_id}  # ... linked to the others it carried
    assert dict(metadata)["traceparent"].split("-")[2] == f"{batch.context.span_id:016x}"  # the server's parent
