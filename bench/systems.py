"""Systems side by side: Funnel, the pass-through floor and the peers (Ray Serve, PyTriton) serving one release,
driven in alternating rounds at several concurrencies; req/s, p50, p99 and the CPU milliseconds each of a system's
processes spent per request, read from /proc (CPU time drifts far less than wall time on a shared VM)."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.loadgen import Target, run_load


def alternating(names: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, name) in measuring order: every name once a round, the order reversed every other round, so a
    drift of the machine's speed weighs on all of them alike."""
    return [(r, name) for r in range(rounds) for name in (names if r % 2 == 0 else names[::-1])]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (children of all its threads, recursively); vanished ones left out."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        found.append(current)
        for task in tasks:
            try:
                todo += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except FileNotFoundError:
                pass
    return found


def _cpu(pids: Collection[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited during the window: its time is lost, and said so by a smaller figure
    return total


@dataclass(frozen=True)
class System:
    """One system under load: how to call it, and its processes by label (read before each measurement, since a
    system may start workers lazily)."""

    name: str
    target: Target
    processes: Callable[[], Mapping[str, Collection[int]]]


def measure(
    system: System, concurrency: int, seconds: float, client_processes: int = 2, cpus: Collection[int] | None = None
) -> dict:
    """One closed-loop load on ``system``: req/s, latency and CPU ms per request of each of its processes."""
    processes = {label: list(pids) for label, pids in system.processes().items()}
    before = {label: _cpu(pids) for label, pids in processes.items()}
    load = run_load(system.target, concurrency, seconds, client_processes, cpus=cpus)
    spent = {label: _cpu(pids) - before[label] for label, pids in processes.items()}
    per_request = {label: round(s * 1000 / max(load.requests, 1), 3) for label, s in spent.items()}
    return {
        "rps": round(load.rps, 2),
        "p50_ms": round(load.p50, 3),
        "p99_ms": round(load.p99, 3),
        "errors": load.errors,
        "cpu_ms_per_request": per_request | {"total": round(sum(per_request.values()), 3)},
    }


def measure_side_by_side(
    systems: Sequence[System],
    levels: Sequence[int],
    rounds: int,
    seconds: float,
    client_processes: int = 2,
    cpus: Collection[int] | None = None,
    report: Callable[[str], None] = print,
) -> dict:
    """Every system at every concurrency in ``levels``, ``rounds`` times, the systems' order alternating by round.
    Returns per concurrency and system the rounds and their means (p99 and CPU: the mean over rounds)."""
    by_name = {s.name: s for s in systems}
    found: dict[int, dict[str, list[dict]]] = {c: {s.name: [] for s in systems} for c in levels}
    for r, name in alternating([s.name for s in systems], rounds):
        for c in levels:
            m = measure(by_name[name], c, seconds, client_processes, cpus)
            found[c][name].append(m)
            report(
                f"round {r} {name:<12} c={c:<3} {m['rps']:8.1f} req/s  p99 {m['p99_ms']:8.2f} ms  errors "
                f"{m['errors']}  CPU ms/request {m['cpu_ms_per_request']}"
            )
    return {
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "by_concurrency": {str(c): {name: summary(ms) for name, ms in per.items()} for c, per in found.items()},
    }


def summary(measurements: Sequence[dict]) -> dict:
    """The mean of each figure over the rounds, and the rounds' req/s."""

    def mean(values: Sequence[float]) -> float:
        return round(float(np.mean(values)), 3)

    labels = measurements[0]["cpu_ms_per_request"].keys()
    return {
        "rps": mean([m["rps"] for m in measurements]),
        "p50_ms": mean([m["p50_ms"] for m in measurements]),
        "p99_ms": mean([m["p99_ms"] for m in measurements]),
        "errors": int(sum(m["errors"] for m in measurements)),
        "cpu_ms_per_request": {label: mean([m["cpu_ms_per_request"][label] for m in measurements]) for label in labels},
        "rps_per_round": [m["rps"] for m in measurements],
    }


def by_command(pids: Collection[int]) -> dict[str, list[int]]:
    """``pids`` grouped by their command name (/proc/<pid>/comm: "raylet", "tritonserver", ...)."""
    groups: dict[str, list[int]] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        groups.setdefault(name, []).append(pid)
    return groups


def headline(result: dict | None, concurrency: int) -> dict:
    """The figures at ``concurrency`` for a record's top level: <system>_rps and <system>_p99_ms for every system
    measured, and each system's CPU ms per request by process."""
    at = (result or {}).get("by_concurrency", {}).get(str(concurrency), {})
    figures: dict = {}
    for name, m in at.items():
        figures[f"{name}_rps"], figures[f"{name}_p99_ms"] = m["rps"], m["p99_ms"]
    return figures | ({"cpu_ms_per_request": {name: m["cpu_ms_per_request"] for name, m in at.items()}} if at else {})
