"""`make layouts` and `python -m bench.compare`: stack variants (CPU layouts, gateway settings) side by side.

    python -m bench.compare --artifact-root DIR [--variant NAME LAYOUT [ENV=VALUE ...]] ... [--rounds 6]
                            [--duration 6] [--concurrency 16]

This machine's speed drifts by tens of percent within minutes, so two variants measured one after the other
compare the drift as much as the variants. Here every variant's stack runs at once on the stable release of DIR,
and short closed-loop loads alternate between them (A B, B A, A B, ...), so each round sees the same machine.
The idle stacks cost next to nothing while one is loaded. A variant is a name, a CPU layout (see bench.run) and
environment settings for its three services; by default the shared and the pinned layout with no settings, e.g.

    --variant now pinned --variant wide pinned FUNNEL_BATCH_WINDOW_MS=0 FUNNEL_MAX_IN_FLIGHT=2

``project=DIR`` runs a variant's services from another checkout (`git worktree add DIR <commit>`), to compare two
commits side by side.

A setting whose value is OTLP_SINK gets the endpoint of a trace receiver started here (it counts spans, keeps
none): `OTEL_EXPORTER_OTLP_ENDPOINT=OTLP_SINK` measures tracing with a real export path.

Prints a line per load, then each variant's mean requests/s and p99, and every later variant's gain over the
first and how many rounds it won; the last line is JSON. Figures are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import Target, run_load
from bench.otlp_sink import PLACEHOLDER, OtlpSink
from bench.profile import stack_cpu_seconds
from bench.run import ROOT, stable_users, stack_parser
from bench.systems import alternating
from funnel.cli.stack import LAYOUTS, CpuLayout, start_stack, stop_stack
from funnel.paths import PROJECT_ROOT


@dataclass(frozen=True)
class Variant:
    name: str
    layout: str  # one of funnel.cli.stack.LAYOUTS
    env: dict[str, str] = field(default_factory=dict)  # settings for all three services
    project: Path = PROJECT_ROOT  # the checkout whose code the services run

    @classmethod
    def parse(cls, words: Sequence[str]) -> Variant:
        """From ``NAME LAYOUT [project=DIR] [ENV=VALUE ...]``."""
        if len(words) < 2:
            raise ValueError(f"expected NAME LAYOUT [project=DIR] [ENV=VALUE ...], got {' '.join(words)!r}")
        name, layout, *settings = words
        if layout not in LAYOUTS:
            raise ValueError(f"variant {name!r}: expected a layout in {LAYOUTS}, got {layout!r}")
        malformed = [s for s in settings if "=" not in s or not s.split("=", 1)[0]]
        if malformed:
            raise ValueError(f"variant {name!r}: expected ENV=VALUE settings, got {malformed}")
        env = dict(s.split("=", 1) for s in settings)
        project = Path(env.pop("project", PROJECT_ROOT)).resolve()
        if not (project / "gateway" / "__main__.py").is_file():
            raise ValueError(f"variant {name!r}: expected project= to name a Funnel checkout, got {str(project)!r}")
        return cls(name, layout, env, project)


DEFAULT_VARIANTS = tuple(Variant(name, name) for name in LAYOUTS)


def parse_variants(groups: Sequence[Sequence[str]] | None) -> tuple[Variant, ...]:
    """The --variant groups (at least two, names distinct), or the two layouts when none are given."""
    if not groups:
        return DEFAULT_VARIANTS
    variants = tuple(Variant.parse(words) for words in groups)
    names = [v.name for v in variants]
    if len(variants) < 2 or len(set(names)) != len(names):
        raise ValueError(f"expected at least two variants with distinct names, got {names}")
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = stack_parser("python -m bench.compare", __doc__, ROOT / "var" / "compare")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="NAME LAYOUT [ENV=VALUE]",
        help="a stack to compare (repeat; default: the shared and the pinned layout)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variant)
        layouts = {v.name: CpuLayout.of(v.layout, os.sched_getaffinity(0)) for v in variants}
    except ValueError as exc:
        parser.error(str(exc))
    names = [v.name for v in variants]
    stable, users = stable_users(parser, args.artifact_root)
    sink = OtlpSink() if any(PLACEHOLDER in v.env.values() for v in variants) else None
    if sink is not None:
        sink.start()
        variants = tuple(
            Variant(
                v.name, v.layout, {k: sink.endpoint if x == PLACEHOLDER else x for k, x in v.env.items()}, v.project
            )
            for v in variants
        )

    stacks: dict[str, dict] = {}
    results: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for v in variants:
            stacks[v.name] = start_stack(
                args.artifact_root,
                args.out / v.name,
                extra_env=v.env,
                cpus=layouts[v.name].services,
                project=v.project,
            )
        targets = {
            name: Target("recommend", stack["gateway"].address, user_ids=tuple(users)) for name, stack in stacks.items()
        }
        for name in names:  # warm every path before measuring
            run_load(targets[name], args.concurrency, 3.0, args.client_processes, cpus=layouts[name].rest)
        for r, name in alternating(names, args.rounds):
            before = stack_cpu_seconds(stacks[name])
            load = run_load(
                targets[name], args.concurrency, args.duration, args.client_processes, cpus=layouts[name].rest
            )
            cpu_ms = {
                service: round(1000 * (seconds - before[service]) / max(load.requests, 1), 2)
                for service, seconds in stack_cpu_seconds(stacks[name]).items()
            }
            results[name].append(
                {
                    "round": r,
                    "rps": round(load.rps, 1),
                    "p99_ms": round(load.p99, 2),
                    "errors": load.errors,
                    "cpu_ms_per_request": cpu_ms,
                }
            )
            print(
                f"round {r} {name:<8} {load.rps:7.1f} req/s  p50 {load.p50:6.1f} ms  p99 {load.p99:6.1f} ms  "
                f"errors {load.errors}  CPU ms/request {cpu_ms}",
                flush=True,
            )
    finally:
        for stack in stacks.values():
            stop_stack(stack)
        if sink is not None:
            sink.stop()
            print(f"the OTLP sink received {sink.spans} spans")

    summary = {
        name: {
            "mean_rps": round(sum(x["rps"] for x in rs) / len(rs), 1),
            "mean_p99_ms": round(sum(x["p99_ms"] for x in rs) / len(rs), 2),
        }
        for name, rs in results.items()
    }
    base = names[0]
    for v in variants:
        s = summary[v.name]
        print(
            f"{v.name:<8} ({v.layout}{''.join(f' {k}={x}' for k, x in v.env.items())}) mean {s['mean_rps']:7.1f} "
            f"req/s, mean p99 {s['mean_p99_ms']:6.1f} ms"
        )
    for name in names[1:]:
        s = summary[name]
        s["gain"] = round(s["mean_rps"] / summary[base]["mean_rps"] - 1, 4)
        s["wins"] = sum(x["rps"] > b["rps"] for x, b in zip(results[name], results[base], strict=True))
        print(f"{name} vs {base}: {s['gain']:+.1%} req/s, won {s['wins']} of {args.rounds} rounds")
    print(
        json.dumps(
            {
                "release_id": stable,
                "concurrency": args.concurrency,
                "variants": {v.name: {"layout": v.layout, "env": v.env} for v in variants},
                "rounds": results,
                "summary": summary,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
