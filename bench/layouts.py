"""`make layouts`: the shared and the pinned CPU layout (see bench.run) compared side by side, drift-proof.

    python -m bench.layouts --artifact-root DIR [--rounds 6] [--duration 6] [--concurrency 16]

This machine's speed drifts by tens of percent within minutes, so two layouts measured one after the other compare
the drift as much as the layouts. Here both stacks run at once on the stable release of DIR, and short closed-loop
loads alternate between them (A B, B A, A B, ...), so each round's pair sees the same machine. The idle stack costs
next to nothing while the other is loaded. Prints a line per load, then each layout's mean requests/s and p99, the
pinned layout's gain and how many rounds it won; the last line is JSON. Figures are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import sys

from bench.loadgen import Target, run_load
from bench.profile import SERVICES, cpu_seconds
from bench.run import LAYOUTS, ROOT, CpuLayout, alternating, stable_users, stack_parser


def order(rounds: int) -> list[tuple[int, str]]:
    """(round, layout) in load order: each round loads both layouts, alternating which goes first."""
    return alternating(LAYOUTS, rounds)


def main(argv: list[str] | None = None) -> int:
    from funnel.stack import start_stack, stop_stack

    parser = stack_parser("python -m bench.layouts", __doc__, ROOT / "var" / "layouts")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load")
    args = parser.parse_args(argv)
    try:
        layouts = {name: CpuLayout.of(name, os.sched_getaffinity(0)) for name in LAYOUTS}
    except ValueError as exc:
        parser.error(str(exc))
    stable, users = stable_users(parser, args.artifact_root)

    stacks: dict[str, dict] = {}
    results: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    try:
        for name in LAYOUTS:
            stacks[name] = start_stack(args.artifact_root, args.out / name, cpus=layouts[name].services)
        targets = {name: Target("recommend", stack["gateway"].address, user_ids=tuple(users)) for name, stack in stacks.items()}
        for name in LAYOUTS:  # warm every path before measuring
            run_load(targets[name], args.concurrency, 3.0, args.client_processes, cpus=layouts[name].rest)
        for r, name in order(args.rounds):
            pids = {service: stacks[name][service].process.pid for service in SERVICES}
            before = {service: cpu_seconds(pid) for service, pid in pids.items()}
            load = run_load(targets[name], args.concurrency, args.duration, args.client_processes,
                            cpus=layouts[name].rest)
            cpu_ms = {service: round(1000 * (cpu_seconds(pid) - before[service]) / max(load.requests, 1), 2)
                      for service, pid in pids.items()}
            results[name].append({"round": r, "rps": round(load.rps, 1), "p99_ms": round(load.p99, 2),
                                  "errors": load.errors, "cpu_ms_per_request": cpu_ms})
            print(f"round {r} {name:<6} {load.rps:7.1f} req/s  p50 {load.p50:6.1f} ms  p99 {load.p99:6.1f} ms  "
                  f"errors {load.errors}  CPU ms/request {cpu_ms}", flush=True)
    finally:
        for stack in stacks.values():
            stop_stack(stack)

    summary = {name: {"mean_rps": round(sum(x["rps"] for x in rs) / len(rs), 1),
                      "mean_p99_ms": round(sum(x["p99_ms"] for x in rs) / len(rs), 2)} for name, rs in results.items()}
    wins = sum(p["rps"] > s["rps"] for p, s in zip(results["pinned"], results["shared"], strict=True))
    gain = summary["pinned"]["mean_rps"] / summary["shared"]["mean_rps"] - 1
    for name, s in summary.items():
        print(f"{name:<6} mean {s['mean_rps']:7.1f} req/s, mean p99 {s['mean_p99_ms']:6.1f} ms")
    print(f"pinned vs shared: {gain:+.1%} req/s, won {wins} of {args.rounds} rounds "
          f"(gateway on CPU {sorted(layouts['pinned'].front or ())}, load generator and stages on CPU "
          f"{sorted(layouts['pinned'].rest or ())})")
    print(json.dumps({"release_id": stable, "concurrency": args.concurrency, "rounds": results, "summary": summary,
                      "pinned_gain": round(gain, 4), "pinned_wins": wins}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
