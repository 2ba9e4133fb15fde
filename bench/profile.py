"""`make profile`: where each service spends its CPU under load, sampled with py-spy while the bench drives it.

    python -m bench.profile --artifact-root DIR [--concurrency 16] [--duration 15] [--out var/profile]

Starts the three services on the stable release of DIR (funnel.cli.stack), drives the gateway's Recommend with the
bench's closed-loop load generator, and meanwhile samples every service with `py-spy record` (non-blocking, idle
threads left out; by default only the thread holding the GIL). Writes one collapsed-stack file per service
(flamegraph tools read it), and prints, per service,
the functions holding the most samples: by self time (the frame itself is on CPU) and by inclusive time (the
frame is anywhere on the stack). Figures are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TypedDict

from bench.loadgen import Target, run_load
from bench.run import ROOT, stable_users, stack_parser
from bench.systems import cpu_seconds
from funnel.cli.stack import ServiceProcess, start_stack, stop_stack

SERVICES = ("gateway", "retrieval", "ranking")


class Summary(TypedDict):
    """Samples, and the ``top`` frames by their share of them: in the frame itself and anywhere below it."""

    samples: int
    self: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


def summarize(collapsed: str, top: int) -> Summary:
    """{"self": [(frame, share of samples)], "inclusive": [...]} from py-spy's collapsed stacks ("a;b;c N")."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        n = int(count)
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(n / total, 4)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self": share(own) if total else [], "inclusive": share(anywhere) if total else []}


def stack_cpu_seconds(stack: dict[str, ServiceProcess]) -> dict[str, float]:
    """cpu_seconds of each of a stack's services."""
    return {name: cpu_seconds(stack[name].process.pid) for name in SERVICES}


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(executable: str, pid: int, duration: float, output: Path, rate: int, gil: bool) -> subprocess.Popen[bytes]:
    """Start py-spy sampling ``pid`` for ``duration`` seconds into collapsed stacks at ``output``; with ``gil``,
    only the thread holding the GIL is sampled."""
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration)),
        "--rate",
        str(rate),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
        *(["--gil"] if gil else []),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser("python -m bench.profile", __doc__, ROOT / "var" / "profile")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load, all sampled")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--gil",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample only the thread holding the GIL: the Python work that serializes a service "
        "(default); --no-gil samples every thread that is not idle",
    )
    parser.add_argument("--top", type=int, default=12, help="functions listed per service and measure")
    args = parser.parse_args(argv)
    executable = py_spy()
    if executable is None:
        parser.error("py-spy not found: it is in the bench extra (pip install -c constraints.txt -e .[bench])")

    stable, users = stable_users(parser, args.artifact_root)
    args.out.mkdir(parents=True, exist_ok=True)
    stack = start_stack(args.artifact_root, args.out / "services")
    try:
        target = Target("recommend", stack["gateway"].address, user_ids=tuple(users))
        run_load(target, args.concurrency, 3.0, args.client_processes)  # warm every path before sampling
        spies = {
            name: record(
                executable, stack[name].process.pid, args.duration, args.out / f"{name}.txt", args.rate, args.gil
            )
            for name in SERVICES
        }
        before = stack_cpu_seconds(stack)
        load = run_load(target, args.concurrency, args.duration, args.client_processes)
        cpu = {name: round(seconds - before[name], 2) for name, seconds in stack_cpu_seconds(stack).items()}
        for name, spy in spies.items():
            _, err = spy.communicate(timeout=args.duration + 60)
            if spy.returncode != 0:
                print(
                    f"py-spy on {name} exited {spy.returncode}: {err.decode(errors='replace').strip()}", file=sys.stderr
                )
    finally:
        stop_stack(stack)
    report = {
        "release_id": stable,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "load": load.summary(),
        "cpu_seconds": cpu,
        "cpus": os.cpu_count(),
        "services": {},
    }
    print(
        f"release {stable}: {load.rps:.0f} req/s at concurrency {args.concurrency}, p50 {load.p50:.1f} ms, "
        f"p99 {load.p99:.1f} ms, {load.errors} errors"
    )
    requests = max(load.requests, 1)
    print(
        "CPU per request (ms): "
        + ", ".join(f"{name} {1000 * cpu[name] / requests:.2f}" for name in SERVICES)
        + f"; the {os.cpu_count()} CPUs offer {1000 * (os.cpu_count() or 1) * args.duration / requests:.2f} ms per "
        "request, the rest went to the load generator, py-spy and anything else running"
    )
    for name in SERVICES:
        path = args.out / f"{name}.txt"
        summary = summarize(path.read_text() if path.is_file() else "", args.top)
        report["services"][name] = summary
        held = "the thread holding the GIL" if args.gil else "threads not idle"
        print(f"\n== {name}: {summary['samples']} samples of {held} at {args.rate}/s over {args.duration:g} s ({path})")
        for kind, frames in (("self", summary["self"]), ("inclusive", summary["inclusive"])):
            print(f"  by {kind} time:")
            for frame, share in frames:
                print(f"    {share:6.1%}  {frame}")
    (args.out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"release_id": stable, "rps": round(load.rps, 1), "p99_ms": round(load.p99, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
