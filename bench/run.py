"""`make bench`: one release, measured three ways in one run, on the same machine and at the same concurrency.

    python -m bench.run --items 1000000 --users 100000 --duration 20 [--also movielens-100k] [--out var/bench]
    python -m bench.run --dataset movielens-100k --duration 20

1. the floor: a unary gRPC echo (one hop, a request the size of a Recommend request) driven by the same load
   generator at the same concurrency levels;
2. in-process TFRS serving of the same release's models in one Python process (BruteForce, then the TFRS ScaNN
   layer, each followed by the ranker);
3. Funnel: the three services as separate processes (funnel.cli.stack), driven through the gateway at each
   concurrency for a fixed time: requests/s, p50, p99, errors, and per-stage times from RecommendResponse.timings;
4. recall@100 of the served ScaNN index against exact search on sampled users;

plus the time from starting the services to all SERVING (the load time) and their resident memory.

--layout shared (the default) lets every process run on every CPU. --layout pinned gives the server a client
calls first (the echo server, Funnel's gateway) the lowest allowed CPU to itself and confines the load generator
and the two stages to the others; the in-process TFRS runs stay on every CPU. --rounds N measures the headline
concurrency's floor, in-process TFRS and Funnel once more, side by side: N rounds alternating their order, so
the ratios of their means compare one stretch of the machine (its speed drifts by tens of percent within
minutes).

The release is built with trainer.pipeline (real towers trained on the data; embedding size 64) and cached under
--out by its parameters. It prints readable tables and, as the last line, one JSON object. Figures are reported,
not asserted.

This module imports no TensorFlow (the load generator's spawned processes import it as __mp_main__).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.build import SYNTHETIC, BuildSpec, cached, ensure_release
from bench.echo import EchoProcess
from bench.loadgen import LoadResult, Target, run_load
from bench.passthrough import MODULES as FLOOR
from bench.systems import System, alternating, by_command, headline, measure_side_by_side
from funnel.cli.stack import LAYOUTS, CpuLayout, ServiceProcess, start_stack, stop_process, stop_stack
from funnel.paths import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent
GOALS_ITEMS = 1_000_000  # the catalog size the goals are stated for


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MB, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    return {"rss_mb": out.get("VmRSS", float("nan")), "peak_rss_mb": out.get("VmHWM", float("nan"))}


def sample_users(release_dir: Path, n: int, seed: int) -> list[str]:
    """``n`` users the release knows (they have stored histories), drawn without replacement, deterministic."""
    from funnel.release.files import read_seen

    known = read_seen(release_dir).users.tolist()
    pick = np.random.default_rng(seed).choice(len(known), min(n, len(known)), replace=False)
    return [known[i] for i in sorted(pick)]


def stable_users(parser: argparse.ArgumentParser, artifact_root: Path, n: int = 1000) -> tuple[str, list[str]]:
    """The stable release of ``artifact_root`` and ``n`` of its users (sample_users, seed 42); a usage error when
    the root has no stable release."""
    from funnel.release.store import ArtifactStore

    store = ArtifactStore(artifact_root)
    stable = store.get_channel("stable")
    if stable is None:
        parser.error(f"expected a stable release in {artifact_root}, found none")
    return stable, sample_users(store.release_dir(stable), n, seed=42)


def recommend_payload(user_id: str, k: int) -> bytes:
    from funnel.v1 import common_pb2, gateway_pb2

    return gateway_pb2.RecommendRequest(user=common_pb2.UserContext(user_id=user_id), k=k).SerializeToString()


class Phases:
    """Wall time of each phase, printed as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> AbstractContextManager[None]:
        phases = self

        class _Phase:
            def __enter__(self) -> None:
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                self.started = time.monotonic()

            def __exit__(self, *exc: object) -> None:
                phases.seconds[name] = round(time.monotonic() - self.started, 2)
                print(f"[bench] {name}: {phases.seconds[name]:.1f} s", file=sys.stderr, flush=True)

        return _Phase()


class InProcessTFRS:
    """bench.inprocess in its own process (TensorFlow stays out of this one), kept up with its models loaded:
    ``result`` is its full measurement; ``again(seconds)`` measures both layers once more (the side-by-side
    rounds), without loading anything afresh. ``with InProcessTFRS(...) as tfrs: ...``."""

    def __init__(
        self,
        release_dir: Path,
        users_file: Path,
        concurrency: int,
        duration: float,
        recall_users: int,
        seed: int,
        k: int,
        log_path: Path,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "bench.inprocess",
            "--release-dir",
            str(release_dir),
            "--users-file",
            str(users_file),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--recall-users",
            str(recall_users),
            "--seed",
            str(seed),
            "-k",
            str(k),
            "--serve-rounds",
        ]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        try:
            self.result: dict = self._read()
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(60)
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"in-process TFRS run failed (exit {self.process.returncode}); log {self.log_path}:\n{tail}"
            )
        return json.loads(line)

    def again(self, seconds: float) -> dict:
        """{"bruteforce@<c>": summary, "scann@<c>": summary} of ``seconds`` more at the same concurrency."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{seconds}\n".encode())
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """End its rounds (stdin closes) and wait for it to exit; SIGTERM, then SIGKILL, after a minute."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            stop_process(self.process, grace=10)
        self._log.close()

    def __enter__(self) -> InProcessTFRS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stack_parser(prog: str, doc: str | None, out: Path) -> argparse.ArgumentParser:
    """The arguments every tool serving a root's stable release under load shares."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact-root", type=Path, required=True, help="a root whose stable release to serve")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def side_by_side(
    args: argparse.Namespace, echo: Target, funnel: Target, tfrs: InProcessTFRS, cpus: Collection[int] | None
) -> dict:
    """The headline concurrency's floor, in-process TFRS (``tfrs``, models already loaded) and Funnel again, in
    ``args.rounds`` rounds of ``args.duration / args.rounds`` s each, alternating their order; a ratio of the
    means compares one stretch of the machine, however its speed drifts. Requests/s per round and their means."""
    h, seconds = args.headline, args.duration / args.rounds
    rounds: list[dict[str, float]] = [{} for _ in range(args.rounds)]
    for r, step in alternating(("echo", "tfrs", "e2e"), args.rounds):
        if step == "tfrs":
            found = tfrs.again(seconds)
            rounds[r]["tfrs_bruteforce_rps"] = found[f"bruteforce@{h}"]["rps"]
            rounds[r]["tfrs_scann_rps"] = found[f"scann@{h}"]["rps"]
        else:
            load = run_load(echo if step == "echo" else funnel, h, seconds, args.client_processes, cpus=cpus)
            rounds[r][f"{step}_rps"] = round(load.rps, 2)
    means = {key: round(float(np.mean([m[key] for m in rounds])), 2) for key in rounds[0]}
    return {"rounds": args.rounds, "seconds_per_measurement": seconds, "per_round": rounds} | means


def _stack_processes(stack: dict[str, ServiceProcess]) -> dict[str, list[int]]:
    return {name: [service.process.pid] for name, service in stack.items()}


def _processes_of(peer: Any) -> dict[str, list[int]]:
    return by_command(peer.pids())


# name → (class, settings). Ray Serve in its documented high-throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1),
# which served about half again as much as stock Serve in the peer's smoke runs (docs/peers-rayserve.md).
PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    "rayserve": ("bench.peers.rayserve:RayServePeer", {"throughput_optimized": True}),
    "triton": ("bench.peers.triton:TritonPeer", {}),
}


def compare_systems(
    args: argparse.Namespace, root: Path, run_dir: Path, funnel: dict[str, ServiceProcess], users: Sequence[str]
) -> dict:
    """Funnel (its running stack), the three-hop pass-through floor and each peer that starts, on the same release,
    side by side (bench.systems). A peer that fails to start is reported with its error, not measured. The peers
    may use every CPU; the load generator runs where it does for Funnel."""
    systems = [
        System(
            "funnel",
            Target("recommend", funnel["gateway"].address, user_ids=tuple(users), k=args.k),
            functools.partial(_stack_processes, funnel),
        )
    ]
    failed: dict[str, str] = {}
    with ExitStack() as running:
        floor = start_stack(
            root, run_dir / "passthrough", timeout=args.start_timeout, cpus=args.cpu_layout.services, modules=FLOOR
        )
        running.callback(stop_stack, floor)
        systems.append(
            System(
                "passthrough",
                Target("recommend", floor["gateway"].address, user_ids=tuple(users), k=args.k),
                functools.partial(_stack_processes, floor),
            )
        )
        for name in args.peers:
            spec, settings = PEERS[name]
            module, _, cls = spec.partition(":")
            try:
                peer = running.enter_context(
                    getattr(importlib.import_module(module), cls)(root, run_dir / name, **settings)
                )
            except Exception as exc:  # reported in the record: the bench measures the others
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"[bench] peer {name} did not start: {failed[name]}", file=sys.stderr, flush=True)
                continue
            systems.append(System(name, peer.target(users, args.k), functools.partial(_processes_of, peer)))
        levels = sorted(set(args.concurrency) | {args.headline})
        result = measure_side_by_side(
            systems,
            levels,
            args.systems_rounds,
            args.systems_seconds,
            args.client_processes,
            args.cpu_layout.rest,
            report=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True),
        )
    return result | {"failed_to_start": failed}


def bench_one(spec: BuildSpec, args: argparse.Namespace, out: Path) -> dict:
    """Build or reuse the release for ``spec`` and measure everything; returns the result record."""
    phases = Phases()
    started = time.monotonic()
    root = out / "releases" / spec.key()
    run_dir = out / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.key()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] {spec.label()}: release {spec.release_id()} in {root}; logs in {run_dir}", file=sys.stderr)

    with phases("build release"):
        reused = cached(spec, root)
        release_id, build = ensure_release(spec, root, out / "logs" / f"build-{spec.key()}.log", args.cache_dir)
    release_dir = root / "releases" / release_id
    users = sample_users(release_dir, args.request_users, spec.seed)
    users_file = run_dir / "users.json"
    users_file.write_text(json.dumps(users))
    median_user = sorted(users, key=len)[len(users) // 2]
    payload = recommend_payload(median_user, args.k)
    levels = sorted(set(args.concurrency) | {args.headline})
    front, rest = args.cpu_layout.front, args.cpu_layout.rest

    echo: dict[int, LoadResult] = {}
    with phases("echo floor"), EchoProcess(run_dir / "echo.log", args.server_workers, cpus=front) as server:
        for c in levels:
            echo[c] = run_load(
                Target("echo", server.address, payload=payload), c, args.duration, args.client_processes, cpus=rest
            )
        echo_rss = rss_mb(server.pid)

    with phases("in-process TFRS"):  # stays up, idle, for the side-by-side rounds
        inprocess = InProcessTFRS(
            release_dir,
            users_file,
            args.headline,
            args.duration,
            args.recall_users,
            spec.seed,
            args.k,
            run_dir / "inprocess.log",
        )
    funnel: dict[int, LoadResult] = {}
    memory: dict[str, dict] = {}
    with inprocess:
        tfrs = inprocess.result
        with phases("start services"):
            t0 = time.monotonic()
            stack = start_stack(root, run_dir / "services", timeout=args.start_timeout, cpus=args.cpu_layout.services)
            load_time = time.monotonic() - t0
        try:
            memory["serving"] = {name: rss_mb(s.process.pid) for name, s in stack.items()}
            target = Target("recommend", stack["gateway"].address, user_ids=tuple(users), k=args.k)
            with phases("Funnel load"):
                for c in levels:
                    funnel[c] = run_load(target, c, args.duration, args.client_processes, cpus=rest)
                    memory[f"after_c{c}"] = {name: rss_mb(s.process.pid) for name, s in stack.items()}
            side = None
            if args.rounds:
                with (
                    phases("side by side"),
                    EchoProcess(run_dir / "echo-side.log", args.server_workers, cpus=front) as server,
                ):
                    side = side_by_side(args, Target("echo", server.address, payload=payload), target, inprocess, rest)
            systems = None
            if args.systems_rounds:
                with phases("systems side by side"):
                    systems = compare_systems(args, root, run_dir, stack, users)
        finally:
            with phases("stop services"):
                exit_codes = stop_stack(stack)

    h = args.headline
    e2e, floor = funnel[h], echo[h]
    bf, sc = tfrs["results"][f"bruteforce@{h}"], tfrs["results"][f"scann@{h}"]
    final_memory = memory[f"after_c{levels[-1]}"]
    record = {
        "dataset": build.get("dataset", spec.dataset),
        "catalog_items": tfrs["catalog_items"],
        "users": build.get("users"),
        "interactions": build.get("interactions"),
        "embedding_dim": spec.embedding_dim,
        "index_dim": tfrs["embedding_dim"],
        "concurrency": h,
        "duration_s": args.duration,
        "client_processes": args.client_processes,
        "layout": args.layout,
        "cpus": {"front": sorted(front), "rest": sorted(rest)} if front else None,
        "e2e_rps": round(e2e.rps, 2),
        "e2e_p50_ms": round(e2e.p50, 3),
        "e2e_p99_ms": round(e2e.p99, 3),
        "e2e_errors": e2e.errors,
        "e2e_degraded": e2e.flags.get("degraded", 0),
        "echo_rps": round(floor.rps, 2),
        "echo_p50_ms": round(floor.p50, 3),
        "echo_p99_ms": round(floor.p99, 3),
        "tfrs_bruteforce_rps": bf["rps"],
        "tfrs_bruteforce_p99_ms": bf["p99_ms"],
        "tfrs_scann_rps": sc["rps"],
        "tfrs_scann_p99_ms": sc["p99_ms"],
        "ann_recall_at_100": round(tfrs["ann_recall_at_100"], 4),
        "side_by_side": side,
        "systems": systems,
        **headline(systems, h),
        "tfrs_scann_layer_recall_at_100": round(tfrs["tfrs_scann_recall_at_100"], 4),
        "load_time_s": round(load_time, 2),
        "rss_mb": {name: m["rss_mb"] for name, m in final_memory.items()},
        "peak_rss_mb": {name: m["peak_rss_mb"] for name, m in final_memory.items()},
        "echo_rss_mb": echo_rss["rss_mb"],
        "e2e_by_concurrency": {str(c): r.summary() for c, r in funnel.items()},
        "echo_by_concurrency": {str(c): r.summary() for c, r in echo.items()},
        "tfrs": tfrs,
        "memory": memory,
        "service_exit_codes": exit_codes,
        "release_id": release_id,
        "release_reused": reused,
        "build": build,
        "phase_seconds": phases.seconds | {"total": round(time.monotonic() - started, 2)},
        "run_dir": str(run_dir),
    }
    record["goals"] = goals(record)
    if systems:
        plot_systems(
            systems,
            f"{record['dataset']}: {record['catalog_items']:,} items, same release, same 2 cores",
            run_dir / "systems.png",
        )
    (run_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def goals(r: dict) -> dict:
    """The issues' goals (stated for 1M items at concurrency 16), each with its figure and whether it is met.

    Retired (issue 19): e2e >= 0.33x the one-hop echo and p99 <= 20 ms; the echo is still measured and shown. The
    systems goals need the systems comparison (--systems-rounds) and judge its side-by-side means.
    """

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("inf")

    checks = {
        "e2e_errors == 0": (r["e2e_errors"], r["e2e_errors"] == 0),
        "e2e_rps >= 5 x tfrs_bruteforce_rps": (
            ratio(r["e2e_rps"], r["tfrs_bruteforce_rps"]),
            ratio(r["e2e_rps"], r["tfrs_bruteforce_rps"]) >= 5,
        ),
        "e2e_rps >= 1.5 x tfrs_scann_rps": (
            ratio(r["e2e_rps"], r["tfrs_scann_rps"]),
            ratio(r["e2e_rps"], r["tfrs_scann_rps"]) >= 1.5,
        ),
        "ann_recall_at_100 >= 0.95": (r["ann_recall_at_100"], r["ann_recall_at_100"] >= 0.95),
        "load_time_s < 30": (r["load_time_s"], r["load_time_s"] < 30),
    }
    side = r.get("side_by_side")
    if side:  # the same ratios from the alternating rounds, which the machine's drift does not skew
        for key, factor in (("tfrs_bruteforce_rps", 5), ("tfrs_scann_rps", 1.5)):
            value = ratio(side["e2e_rps"], side[key])
            checks[f"side by side: e2e_rps >= {factor:g} x {key}"] = (value, value >= factor)
    if r.get("funnel_rps") is not None:  # the systems comparison ran
        funnel = r["funnel_rps"]
        for peer, factor in (("rayserve", 1.25), ("triton", 1.0), ("passthrough", 0.6)):
            if f"{peer}_rps" in r:
                value = ratio(funnel, r[f"{peer}_rps"])
                checks[f"systems: funnel_rps >= {factor:g} x {peer}_rps"] = (value, value >= factor)
        if "rayserve_p99_ms" in r:
            checks["systems: funnel_p99_ms < rayserve_p99_ms"] = (
                r["funnel_p99_ms"],
                r["funnel_p99_ms"] < r["rayserve_p99_ms"],
            )
        cpu = r["cpu_ms_per_request"]["funnel"]["total"]
        checks["systems: Funnel's CPU ms per request (3 services) <= 2.0"] = (cpu, cpu <= 2.0)
    return {name: {"value": value, "met": bool(met)} for name, (value, met) in checks.items()} | {
        "applies": r["catalog_items"] >= GOALS_ITEMS and r["concurrency"] == 16
    }


def _fmt(value: float, width: int, digits: int = 1) -> str:
    return f"{value:>{width}.{digits}f}" if value == value else f"{'-':>{width}}"  # NaN → "-"


def _layout(r: dict) -> str:
    cpus = r.get("cpus")
    if not cpus:
        return "every process on every CPU"
    return f"pinned: echo server / gateway on CPU {cpus['front']}, load generator and stages on CPU {cpus['rest']}"


def systems_table(systems: dict | None) -> list[str]:
    """The systems comparison's lines: each system's means at each concurrency, CPU ms per request by process."""
    if not systems:
        return []
    lines = [
        "",
        f"systems side by side: {systems['rounds']} alternating rounds of {systems['seconds_per_measurement']:g} s, "
        "means; CPU ms per request from /proc, by process",
        f"{'system':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'CPU ms/req':>10}"
        "  by process",
    ]
    for c, at in systems["by_concurrency"].items():
        for name, m in at.items():
            cpu = dict(m["cpu_ms_per_request"])
            total = cpu.pop("total")
            lines.append(
                f"{name:<12} {c:>4} {_fmt(m['rps'], 9)} {_fmt(m['p50_ms'], 8, 2)} {_fmt(m['p99_ms'], 8, 2)} "
                f"{m['errors']:>6} {_fmt(total, 10, 2)}  " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            )
    lines += [f"{name}: did not start: {error}" for name, error in systems.get("failed_to_start", {}).items()]
    return lines


def plot_systems(systems: dict, title: str, path: Path) -> None:
    """req/s and p99 of every system against concurrency, two panels, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(c) for c in systems["by_concurrency"]]
    names = list(next(iter(systems["by_concurrency"].values())))
    figure, (rps, p99) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        at = [systems["by_concurrency"][str(c)][name] for c in levels]
        rps.plot(levels, [m["rps"] for m in at], marker="o", label=name)
        p99.plot(levels, [m["p99_ms"] for m in at], marker="o", label=name)
    for axes, label in ((rps, "requests/s"), (p99, "p99 latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(levels, [str(c) for c in levels])
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    p99.set_yscale("log")
    rps.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(r: dict) -> str:
    """The readable report of one record."""
    lines = [
        f"== {r['dataset']}: {r['catalog_items']:,} items, {r['users']:,} users, {r['interactions']:,} "
        f"interactions; release {r['release_id']}; {r['duration_s']:g} s per measurement, "
        f"{r['client_processes']} load-generator processes, same 2 cores, {_layout(r)}",
        f"{'what':<34} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}",
    ]

    def row(name: str, s: dict) -> None:
        lines.append(
            f"{name:<34} {s['concurrency']:>4} {_fmt(s['rps'], 9)} {_fmt(s['p50_ms'], 8, 2)} "
            f"{_fmt(s['p99_ms'], 8, 2)} {s['errors']:>6}"
        )

    for s in r["echo_by_concurrency"].values():
        row("floor: gRPC echo, 1 hop", s)
    row("TFRS in-process: BruteForce+ranker", r["tfrs"]["results"][f"bruteforce@{r['concurrency']}"])
    row("TFRS in-process: ScaNN+ranker", r["tfrs"]["results"][f"scann@{r['concurrency']}"])
    for s in r["e2e_by_concurrency"].values():
        row("Funnel via gateway", s)
    side = r.get("side_by_side")
    if side:
        lines.append(
            f"side by side at concurrency {r['concurrency']}, {side['rounds']} alternating rounds of "
            f"{side['seconds_per_measurement']:g} s, mean req/s: echo {side['echo_rps']:.1f}, TFRS "
            f"BruteForce+ranker {side['tfrs_bruteforce_rps']:.1f}, TFRS ScaNN+ranker "
            f"{side['tfrs_scann_rps']:.1f}, Funnel {side['e2e_rps']:.1f}"
        )
    lines += systems_table(r.get("systems"))
    lines.append("")
    lines.append(
        f"{'Funnel stage times (ms)':<24} {'conc':>4} {'retr mean':>9} {'retr p99':>9} {'rank mean':>9} "
        f"{'rank p99':>9} {'gw mean':>8} {'gw p99':>8} {'client-gw p50':>13} {'degraded':>8}"
    )
    for c, s in r["e2e_by_concurrency"].items():
        overhead = s["p50_ms"] - s.get("total_p50_ms", float("nan"))
        lines.append(
            f"{'':<24} {c:>4} {_fmt(s.get('retrieval_mean_ms', float('nan')), 9, 2)} "
            f"{_fmt(s.get('retrieval_p99_ms', float('nan')), 9, 2)} "
            f"{_fmt(s.get('ranking_mean_ms', float('nan')), 9, 2)} "
            f"{_fmt(s.get('ranking_p99_ms', float('nan')), 9, 2)} "
            f"{_fmt(s.get('total_mean_ms', float('nan')), 8, 2)} {_fmt(s.get('total_p99_ms', float('nan')), 8, 2)} "
            f"{_fmt(overhead, 13, 2)} {s.get('degraded', 0):>8}"
        )
    lines.append("")
    mem = r["memory"]
    lines.append("resident memory (MB)     " + "  ".join(f"{n:>10}" for n in ("retrieval", "ranking", "gateway")))
    for when, values in mem.items():
        lines.append(
            f"  {when:<22} " + "  ".join(_fmt(values[n]["rss_mb"], 10) for n in ("retrieval", "ranking", "gateway"))
        )
    lines.append(
        f"  {'peak (VmHWM)':<22} "
        + "  ".join(_fmt(r["peak_rss_mb"][n], 10) for n in ("retrieval", "ranking", "gateway"))
    )
    t = r["tfrs"]
    lines += [
        "",
        f"load time (start → all three SERVING): {r['load_time_s']:.1f} s",
        f"ANN recall@100 vs exact search ({t['recall_queries']} users): served index {r['ann_recall_at_100']:.4f}; "
        f"TFRS ScaNN layer {r['tfrs_scann_layer_recall_at_100']:.4f}",
        "phases (s): "
        + ", ".join(f"{k} {v:g}" for k, v in r["phase_seconds"].items())
        + (
            f"; release built earlier in {r['build'].get('build_seconds', float('nan')):g} s"
            if r["release_reused"]
            else f"; build {r['build'].get('build_seconds', float('nan')):g} s"
        ),
        "goals"
        + (
            ""
            if r["goals"]["applies"]
            else f" (stated for {GOALS_ITEMS:,} items at concurrency 16; shown for reference)"
        )
        + ":",
    ]
    width = max(len(name) for name in r["goals"])
    for name, g in r["goals"].items():
        if name != "applies":
            lines.append(f"  {'met ' if g['met'] else 'MISS'}  {name:<{width}} {g['value']}")
    return "\n".join(lines)


HEADLINE_KEYS = (
    "catalog_items",
    "concurrency",
    "layout",
    "e2e_rps",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_errors",
    "e2e_degraded",
    "echo_rps",
    "tfrs_bruteforce_rps",
    "tfrs_scann_rps",
    "ann_recall_at_100",
    "load_time_s",
    "rss_mb",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default=SYNTHETIC, help="'synthetic' (generated) or a funnel.data spec, e.g. movielens-100k"
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic catalog size")
    parser.add_argument("--users", type=int, default=100_000, help="synthetic users")
    parser.add_argument("--interactions-per-user", type=float, default=20.0, help="synthetic draws per user (mean)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=BuildSpec.retrieval_epochs, help="retrieval model epochs")
    parser.add_argument("--ranking-epochs", type=int, default=BuildSpec.ranking_epochs)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8192,
        help="retrieval training batch size (in-batch "
        "softmax above 50,000 items: a step costs about the same at 4096 and 8192 on 1M items)",
    )
    parser.add_argument(
        "--also",
        default="",
        help="a second dataset to run first with the same settings (e.g. "
        "movielens-100k); reported in the JSON under its name",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--headline",
        type=int,
        default=16,
        help="the concurrency of the JSON's top-level figures and of the in-process TFRS runs",
    )
    parser.add_argument("--client-processes", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="shared",
        help="shared: every process on every CPU; "
        "pinned: the echo server or gateway alone on one CPU, the rest on the others",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also measure the headline concurrency's floor, "
        "in-process TFRS and Funnel side by side in this many alternating rounds of "
        "duration / rounds seconds each (0: not)",
    )
    parser.add_argument(
        "--systems-rounds",
        type=int,
        default=0,
        help="also measure Funnel, the pass-through floor and the peers side by side at every concurrency in this "
        "many alternating rounds of --systems-seconds each (0: not)",
    )
    parser.add_argument("--systems-seconds", type=float, default=5.0, help="seconds per systems measurement")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"the peers in the systems comparison, comma-separated, of {', '.join(PEERS)} ('' for none)",
    )
    parser.add_argument("--server-workers", type=int, default=16, help="echo server threads (Funnel's default)")
    parser.add_argument("--request-users", type=int, default=1000, help="known users requested in turn")
    parser.add_argument("--recall-users", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    args.peers = [name for name in args.peers.split(",") if name]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"--peers: expected names of {sorted(PEERS)}, got {unknown}")
    try:
        args.cpu_layout = CpuLayout.of(args.layout, os.sched_getaffinity(0))
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = BuildSpec(
        dataset=args.dataset,
        seed=args.seed,
        retrieval_epochs=args.epochs,
        ranking_epochs=args.ranking_epochs,
        retrieval_batch_size=args.batch_size,
    )
    if args.dataset == SYNTHETIC:
        spec = replace(spec, items=args.items, users=args.users, interactions_per_user=args.interactions_per_user)
    else:
        spec = replace(spec, items=0, users=0, interactions_per_user=0.0)
    out = args.out.resolve()
    extra = None
    if args.also:
        extra_spec = (
            replace(spec, dataset=args.also, items=0, users=0, interactions_per_user=0.0)
            if args.also != SYNTHETIC
            else spec
        )
        extra = bench_one(extra_spec, args, out)
        print(table(extra), flush=True)
        print(flush=True)
    record = bench_one(spec, args, out)
    print(table(record), flush=True)
    final = (
        {key: record[key] for key in HEADLINE_KEYS}
        | {
            k: v
            for k, v in record.items()
            if k not in HEADLINE_KEYS
            and k
            in (
                "dataset",
                "users",
                "interactions",
                "embedding_dim",
                "duration_s",
                "client_processes",
                "e2e_by_concurrency",
                "echo_by_concurrency",
                "peak_rss_mb",
                "release_id",
                "phase_seconds",
                "goals",
                "run_dir",
                "tfrs_bruteforce_p99_ms",
                "tfrs_scann_p99_ms",
                "echo_p50_ms",
                "echo_p99_ms",
                "tfrs_scann_layer_recall_at_100",
                "side_by_side",
                "systems",
            )
        }
        | headline(record.get("systems"), record["concurrency"])
    )
    if extra is not None:
        final[extra["dataset"]] = (
            {key: extra[key] for key in HEADLINE_KEYS}
            | {
                "side_by_side": extra["side_by_side"],
                "systems": extra["systems"],
                "run_dir": extra["run_dir"],
            }
            | headline(extra.get("systems"), extra["concurrency"])
        )
    (out / "latest.json").write_text(json.dumps(final, indent=2) + "\n")
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
