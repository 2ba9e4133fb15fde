"""Cross-request batching: concurrent gateway requests for one release share one RetrieveBatch and one RankBatch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
from opentelemetry.trace import SpanContext

from funnel.serving.tracing import batch_members, current_span_context
from gateway.core import StageCandidates, StageScores, StageUnavailable

Q = TypeVar("Q")
R = TypeVar("R")


@dataclass(eq=False)  # compared by identity: queries may hold arrays
class _Slot(Generic[Q, R]):
    query: Q
    deadline: float  # time.monotonic() by which the request needs its answer
    wake: threading.Event = field(default_factory=threading.Event)  # answered, or asked to lead
    lead: bool = False
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None
    span: SpanContext = field(default_factory=current_span_context)  # the request's trace, linked from its batch


class Coalescer(Generic[Q, R]):
    """Runs ``call(key, queries, timeout)`` for batches of queries submitted concurrently under the same key.

    A request that finds fewer than ``max_in_flight`` batches running for its key leads a batch. Requests arriving
    while batches run queue up and go out together as the next batch, led by one of them, as soon as a running
    batch finishes. Batches hold at most ``max_batch``. Time spent waiting counts against each request's timeout:
    a batch is sent with the time its latest-deadline request has left.

    ``window`` (seconds, 0: never) lets a new batch gather: its leader waits until as many requests have joined as
    the key's previous batch held, or until the window ends, whichever is first. A batch of one sets no wait, so
    light traffic never waits, and a window that gathered fewer lowers the next batch's aim.
    """

    def __init__(
        self,
        call: Callable[[str, list[Q], float], Sequence[R]],
        max_batch: int = 32,
        max_in_flight: int = 1,
        window: float = 0.0,
    ) -> None:
        self._call, self.max_batch, self.max_in_flight, self.window = call, max_batch, max_in_flight, window
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Slot[Q, R]]] = {}
        self._in_flight: dict[str, int] = {}
        self._last_batch: dict[str, int] = {}  # size of each key's latest batch: the next gathering's aim
        self._joined = threading.Condition(self._lock)  # a request joined a pending batch

    def submit(self, key: str, query: Q, timeout: float) -> R:
        slot: _Slot[Q, R] = _Slot(query, time.monotonic() + timeout)
        with self._lock:
            pending = self._pending.setdefault(key, [])
            pending.append(slot)
            self._joined.notify_all()
            if self._in_flight.get(key, 0) < self.max_in_flight:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                slot.lead = True
                self._gather(
                    slot, pending, min(self._last_batch.get(key, 1), self.max_batch), min(self.window, timeout)
                )
        if not slot.lead and not slot.wake.wait(timeout):
            with self._lock:
                if not slot.lead and not slot.finished:
                    if slot in self._pending[key]:
                        self._pending[key].remove(slot)
                    raise StageUnavailable("batch", f"no answer within {timeout:.3f}s")
        if slot.lead:
            while not slot.finished:
                if not self._run_batch(key):  # another leader's batch took this request: wait for its answer
                    slot.wake.wait()
            self._hand_off(key)
        if slot.error is not None:
            raise slot.error
        return cast(R, slot.result)  # finished without an error: the batch set its result

    def _gather(self, slot: _Slot[Q, R], pending: list[_Slot[Q, R]], aim: int, window: float) -> None:
        """Wait (holding the lock between checks) until ``pending`` holds ``aim`` requests, another leader's batch
        has taken ``slot``, or ``window`` ends."""
        end = time.monotonic() + window
        while len(pending) < aim and slot in pending and (left := end - time.monotonic()) > 0:
            self._joined.wait(left)

    def _run_batch(self, key: str) -> bool:
        """Send the oldest pending requests as one batch and answer them; False when none were pending."""
        with self._lock:
            batch = self._pending[key][: self.max_batch]
            del self._pending[key][: len(batch)]
            if not batch:
                return False
            self._last_batch[key] = len(batch)
        members = batch_members.set([s.span for s in batch])
        try:
            results = self._call(key, [s.query for s in batch], max(s.deadline for s in batch) - time.monotonic())
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as exc:  # every request of the batch gets the batch's error
            for slot in batch:
                slot.error = exc
        finally:
            batch_members.reset(members)
        for slot in batch:
            slot.finished = True
            slot.wake.set()
        return True

    def _hand_off(self, key: str) -> None:
        """Ask the oldest waiting follower to lead the next batch, or give the in-flight place back (a request
        already leading holds a place of its own)."""
        with self._lock:
            follower = next((s for s in self._pending[key] if not s.lead), None)
            if follower is not None:
                follower.lead = True
                follower.wake.set()
            else:
                self._in_flight[key] -= 1


@dataclass(frozen=True)
class _RetrieveQuery:
    user_id: str
    num_candidates: int
    exclude_seen: bool
    history: np.ndarray


class BatchedRetrieval:
    """The gateway's RetrievalStage, coalescing concurrent calls into RetrieveBatch RPCs."""

    def __init__(self, client: Any, max_batch: int, max_in_flight: int, window: float) -> None:
        self.client = client
        self._coalescer: Coalescer[_RetrieveQuery, StageCandidates] = Coalescer(
            client.retrieve_batch, max_batch, max_in_flight, window
        )

    def retrieve(
        self,
        release_id: str,
        user_id: str,
        num_candidates: int,
        exclude_seen: bool,
        timeout: float,
        history: np.ndarray,
    ) -> StageCandidates:
        if timeout <= 0:
            raise StageUnavailable("retrieval", "the request's deadline left no time for this stage")
        return self._coalescer.submit(
            release_id, _RetrieveQuery(user_id, num_candidates, exclude_seen, history), timeout
        )


class BatchedRanking:
    """The gateway's RankingStage, coalescing concurrent calls into RankBatch RPCs."""

    def __init__(self, client: Any, max_batch: int, max_in_flight: int, window: float) -> None:
        self.client = client
        self._coalescer: Coalescer[tuple[str, np.ndarray, np.ndarray], StageScores] = Coalescer(
            client.rank_batch, max_batch, max_in_flight, window
        )

    def rank(
        self, release_id: str, user_id: str, item_ids: np.ndarray, timeout: float, history: np.ndarray
    ) -> StageScores:
        if timeout <= 0:
            raise StageUnavailable("ranking", "the request's deadline left no time for this stage")
        return self._coalescer.submit(release_id, (user_id, item_ids, history), timeout)
