"""A closed-loop load generator: client threads spread over separate (spawned) processes, merged latencies.

Each thread sends one request, waits for the answer, and sends the next, for a fixed window that starts at the
same moment in every process. Only requests that complete inside the window count; the one in flight at the end
is dropped. The same generator drives the echo floor and Funnel, so both see the same client cost.

This module imports no TensorFlow: spawned workers stay small.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: what a spawn context's Queue(), Event() and Value() return
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

ECHO_METHOD = "/funnel.bench.Echo/Echo"


@dataclass(frozen=True)
class Target:
    """What a worker calls: ``kind`` "echo" (raw bytes ``payload``), "recommend" (the gateway's Recommend for
    ``user_ids`` in turn, each thread starting at a different user) or "peer" (another system's recommend call for
    ``user_ids``, made by ``client``: "module:function", the function taking this Target and returning
    ``(make_call, close)`` as ``_grpc_calls`` does; it runs in the load-generator processes)."""

    kind: str
    address: str
    payload: bytes = b""
    user_ids: tuple[str, ...] = ()
    k: int = 10
    timeout: float = 5.0
    client: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("echo", "recommend", "peer"):
            raise ValueError(f"expected kind 'echo', 'recommend' or 'peer', got {self.kind!r}")
        if self.kind != "echo" and not self.user_ids:
            raise ValueError(f"a {self.kind} target needs user_ids")
        if (self.kind == "peer") != bool(self.client):
            raise ValueError(f"expected a client ('module:function') for a peer target only, got {self.client!r}")


@dataclass
class Part:
    """What one closed loop (one process, or one in-process run) measured."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # status name -> count
    stages: dict[str, list[float]] = field(default_factory=dict)  # stage name -> per-request ms
    flags: Counter = field(default_factory=Counter)  # e.g. "degraded", "cold_start"
    elapsed: float = 0.0  # seconds the window lasted
    cpus: tuple[int, ...] = ()  # the CPUs the process was allowed to run on (empty: not recorded)


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    processes: int
    duration: float  # the measured window, seconds
    requests: int  # completed without error inside the window
    errors: int
    error_codes: dict[str, int]
    latencies_ms: np.ndarray  # sorted, successful requests only
    stages: dict[str, np.ndarray]  # sorted per stage
    flags: dict[str, int]
    cpus: tuple[int, ...] = ()  # every CPU a load-generator process was allowed to run on

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> dict:
        out = {
            "concurrency": self.concurrency,
            "processes": self.processes,
            "duration_s": round(self.duration, 3),
            "requests": self.requests,
            "rps": round(self.rps, 2),
            "p50_ms": round(self.p50, 3),
            "p99_ms": round(self.p99, 3),
            "mean_ms": round(float(np.mean(self.latencies_ms)), 3) if len(self.latencies_ms) else float("nan"),
            "errors": self.errors,
            "error_codes": dict(self.error_codes),
            **{k: v for k, v in self.flags.items()},
            "client_cpus": list(self.cpus),
        }
        for stage, values in self.stages.items():
            name = stage.removesuffix("_ms")
            out[f"{name}_mean_ms"] = round(float(np.mean(values)), 3) if len(values) else float("nan")
            out[f"{name}_p50_ms"] = round(percentile(values, 50), 3)
            out[f"{name}_p99_ms"] = round(percentile(values, 99), 3)
        return out


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it; NaN if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"expected 0 <= q <= 100, got {q}")
    data = np.sort(np.asarray(values, dtype=np.float64))
    if not len(data):
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(data)))
    return float(data[rank - 1])


def merge(parts: Sequence[Part], concurrency: int, duration: float | None = None) -> LoadResult:
    """One result from every process's part: latencies and stage times pooled, errors and flags summed; the
    window is ``duration`` if given, else the longest part's."""
    latencies = np.sort(
        np.concatenate([np.asarray(p.latencies_ms, dtype=np.float64) for p in parts]) if parts else np.zeros(0)
    )
    errors: Counter = Counter()
    flags: Counter = Counter()
    stages: dict[str, list[np.ndarray]] = {}
    for part in parts:
        errors.update(part.errors)
        flags.update(part.flags)
        for stage, values in part.stages.items():
            stages.setdefault(stage, []).append(np.asarray(values, dtype=np.float64))
    window = duration if duration is not None else max((p.elapsed for p in parts), default=0.0)
    return LoadResult(
        concurrency=concurrency,
        processes=len(parts),
        duration=window,
        requests=len(latencies),
        errors=sum(errors.values()),
        error_codes=dict(errors),
        latencies_ms=latencies,
        stages={k: np.sort(np.concatenate(v)) for k, v in stages.items()},
        flags=dict(flags),
        cpus=tuple(sorted({cpu for part in parts for cpu in part.cpus})),
    )


def split_threads(concurrency: int, processes: int) -> list[int]:
    """Threads per process: ``concurrency`` spread as evenly as possible over at most ``processes`` processes."""
    if concurrency < 1 or processes < 1:
        raise ValueError(f"expected concurrency and processes >= 1, got {concurrency} and {processes}")
    processes = min(processes, concurrency)
    base, extra = divmod(concurrency, processes)
    return [base + (i < extra) for i in range(processes)]


Call = Callable[[int], "dict[str, float] | None"]
"""One request; the argument is a running request number; returns stage times and flags (or None).
Raises on failure; an exception's ``code()`` (gRPC) or type names the error."""


def _error_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return code().name
        except Exception:  # a code() that itself fails: name the type instead
            pass
    return type(exc).__name__


def closed_loop(
    make_call: Callable[[int], Call],
    threads: int,
    duration: float,
    start_at: float | None = None,
    first_request: int = 0,
) -> Part:
    """Run ``threads`` closed-loop threads from ``start_at`` (time.monotonic; default now) for ``duration`` s.

    ``make_call(thread)`` builds each thread's call. A call's returned dict maps stage names to ms; keys in
    ``FLAG_KEYS`` count as flags when truthy.
    """
    start = time.monotonic() if start_at is None else start_at
    end = start + duration
    part = Part()
    lock = threading.Lock()
    calls = [make_call(t) for t in range(threads)]

    def loop(thread: int) -> None:
        latencies: list[float] = []
        errors: Counter = Counter()
        stages: dict[str, list[float]] = {}
        flags: Counter = Counter()
        n = first_request + thread * 7919  # each thread walks the request stream from its own place
        call = calls[thread]
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            try:
                extra = call(n)
                failed = None
            except Exception as exc:  # every failure is counted, by name
                extra, failed = None, _error_name(exc)
            t1 = time.monotonic()
            n += 1
            if t1 > end:
                break  # in flight when the window closed: not counted
            if failed is not None:
                errors[failed] += 1
                continue
            latencies.append((t1 - t0) * 1000.0)
            for key, value in (extra or {}).items():
                if key in FLAG_KEYS:
                    flags[key] += int(bool(value))
                else:
                    stages.setdefault(key, []).append(float(value))
        with lock:
            part.latencies_ms.extend(latencies)
            part.errors.update(errors)
            part.flags.update(flags)
            for key, values in stages.items():
                part.stages.setdefault(key, []).extend(values)

    workers = [threading.Thread(target=loop, args=(t,), name=f"load-{t}", daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    part.elapsed = duration
    return part


FLAG_KEYS = ("degraded", "cold_start")


def _calls(target: Target) -> tuple[Callable[[int], Call], Callable[[], None]]:
    """(make_call, close) for a target: a peer's own client, or gRPC."""
    if target.kind == "peer":
        module, _, function = target.client.partition(":")
        make: Callable[[Target], tuple[Callable[[int], Call], Callable[[], None]]]
        make = getattr(importlib.import_module(module), function)
        return make(target)
    return _grpc_calls(target)


def _grpc_calls(target: Target) -> tuple[Callable[[int], Call], Callable[[], None]]:
    """(make_call, close) for a target, over one channel per process (one HTTP/2 connection, like a client)."""
    import grpc

    channel = grpc.insecure_channel(target.address)
    if target.kind == "echo":
        echo = channel.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)  # raw bytes
        payload = target.payload

        def make_echo(thread: int) -> Call:
            def call(n: int) -> None:
                echo(payload, timeout=target.timeout)

            return call

        return make_echo, channel.close

    from funnel.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    requests = [
        gateway_pb2.RecommendRequest(user=common_pb2.UserContext(user_id=u), k=target.k) for u in target.user_ids
    ]

    def make_recommend(thread: int) -> Call:
        def call(n: int) -> dict[str, float]:
            response = stub.Recommend(requests[n % len(requests)], timeout=target.timeout)
            t = response.timings
            return {
                "retrieval_ms": t.retrieval_ms,
                "ranking_ms": t.ranking_ms,
                "total_ms": t.total_ms,
                "degraded": response.degraded,
                "cold_start": response.cold_start,
            }

        return call

    return make_recommend, channel.close


def _worker(
    target: Target,
    threads: int,
    duration: float,
    index: int,
    warmup: int,
    ready: Queue[int],
    go: Event,
    start_at: Synchronized[float],
    results: Queue[tuple[int, Part | None, str | None]],
    cpus: frozenset[int] | None = None,
) -> None:
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)  # before the channel starts gRPC's threads, which inherit it
        make_call, close = _calls(target)
        warm = make_call(0)
        for n in range(warmup):  # connect and touch the code paths before the window opens
            try:
                warm(index * 1_000_003 + n)
            except Exception:  # errors are counted in the window, not here
                pass
        ready.put(index)
        go.wait()
        part = closed_loop(make_call, threads, duration, start_at=start_at.value, first_request=index * 1_000_003)
        part.cpus = tuple(sorted(os.sched_getaffinity(0)))
        close()
        results.put((index, part, None))
    except BaseException as exc:  # reported to the parent, which raises
        ready.put(index)
        results.put((index, None, f"{type(exc).__name__}: {exc}"))


def run_load(
    target: Target,
    concurrency: int,
    duration: float,
    processes: int = 2,
    warmup: int = 5,
    start_delay: float = 0.2,
    cpus: Collection[int] | None = None,
) -> LoadResult:
    """Drive ``target`` with ``concurrency`` closed-loop clients over up to ``processes`` spawned processes
    (confined to ``cpus`` when given) for ``duration`` seconds; the window opens at the same instant in every
    process, after all are connected."""
    layout = split_threads(concurrency, processes)
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    allowed = frozenset(cpus) if cpus else None
    procs = [
        ctx.Process(
            target=_worker,
            args=(target, n, duration, i, warmup, ready, go, start_at, results, allowed),
            name=f"loadgen-{i}",
            daemon=True,
        )
        for i, n in enumerate(layout)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        start_at.value = time.monotonic() + start_delay
        go.set()
        parts: list[Part] = []
        for _ in procs:
            _, part, error = results.get(timeout=duration + start_delay + 120)
            if error is not None:
                raise RuntimeError(f"load generator process failed: {error}")
            parts.append(part)
    except queue.Empty:
        raise RuntimeError("load generator processes did not report in time") from None
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    return merge(parts, concurrency, duration)
