"""Overload: the stack driven open-loop at about 4x its capacity, with and without the in-flight limit."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from funnel.cli.stack import start_stack, stop_stack
from funnel.paths import PROJECT_ROOT, VAR
from funnel.release.files import read_seen
from funnel.release.store import ArtifactStore
from funnel.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

OUT = VAR / "bench" / "overload.json"


@dataclass(frozen=True)
class Phase:
    name: str
    max_requests: int
    offered_per_s: float
    sent: int
    ok: int
    refused: int  # RESOURCE_EXHAUSTED
    other_failures: dict[str, int]
    ok_p50_ms: float
    ok_p99_ms: float
    refused_p99_ms: float
    goodput_per_s: float


def request(user: str) -> gateway_pb2.RecommendRequest:
    return gateway_pb2.RecommendRequest(user=common_pb2.UserContext(user_id=user), k=10)


def closed_loop(address: str, users: list[str], clients: int, seconds: float) -> float:
    """Requests per second ``clients`` threads get answered, each sending the next once answered."""
    done, stop = Counter[int](), threading.Event()

    def client(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            n = i
            while not stop.is_set():
                stub.Recommend(request(users[n % len(users)]), timeout=10)
                done[i] += 1
                n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm
    before, started = sum(done.values()), time.monotonic()
    time.sleep(seconds)
    rate = (sum(done.values()) - before) / (time.monotonic() - started)
    stop.set()
    for t in threads:
        t.join()
    return rate


def open_loop(address: str, users: list[str], rate: float, seconds: float, timeout: float) -> list[tuple[str, float]]:
    """Send at ``rate`` per second whatever the answers do (as independent users would); (status, latency ms) each."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        pending = []
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if now < due:
                time.sleep(min(due - now, 0.002))
                continue
            sent = time.perf_counter()
            future = stub.Recommend.future(request(users[n % len(users)]), timeout=timeout)

            def record(f: Any, sent: float = sent) -> None:  # a call future: it has code()
                code = f.code().name
                with lock:
                    results.append((code, (time.perf_counter() - sent) * 1000))

            future.add_done_callback(record)
            pending.append(future)
            n += 1
        for future in pending:
            try:
                future.result()
            except grpc.RpcError:
                pass
    return results


def summarize(name: str, limit: int, rate: float, seconds: float, results: list[tuple[str, float]]) -> Phase:
    codes = Counter(code for code, _ in results)
    ok = [ms for code, ms in results if code == "OK"]
    refused = [ms for code, ms in results if code == "RESOURCE_EXHAUSTED"]

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1) if values else float("nan")

    others = {code: n for code, n in codes.items() if code not in ("OK", "RESOURCE_EXHAUSTED")}
    return Phase(
        name,
        limit,
        round(rate, 1),
        len(results),
        len(ok),
        len(refused),
        others,
        pct(ok, 50),
        pct(ok, 99),
        pct(refused, 99),
        round(len(ok) / seconds, 1),
    )


def train(root: Path) -> None:
    command = [sys.executable, "-m", "trainer", "--artifact-root", str(root), "--max-users", "300"]
    subprocess.run([*command, "--epochs", "1", "--no-gate", "--no-refit"], cwd=PROJECT_ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--artifact-root", type=Path, help="a store with a stable release (default: train one)")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / measured capacity (default 4)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each open-loop phase")
    parser.add_argument("--timeout", type=float, default=5.0, help="each request's deadline in seconds")
    parser.add_argument("--limits", default="128,100000", help="FUNNEL_MAX_REQUESTS of each phase (comma-separated)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="funnel-overload-"))
    try:
        root = args.artifact_root or scratch / "artifacts"
        if args.artifact_root is None:
            train(root)
        store = ArtifactStore(root)
        stable = store.get_channel("stable")
        if stable is None:
            parser.error(f"{root} has no stable release")
        users = [str(u) for u in read_seen(store.release_dir(stable)).users.tolist()]
        phases: list[Phase] = []
        capacity = 0.0
        for limit in (int(x) for x in args.limits.split(",")):
            env = {"FUNNEL_MAX_REQUESTS": str(limit), "FUNNEL_MAX_WORKERS": str(limit + 32)}
            services = start_stack(root, scratch / f"logs-{limit}", extra_env=env)
            try:
                gateway = services["gateway"].address
                if not capacity:
                    capacity = closed_loop(gateway, users, clients=8, seconds=8)
                    print(f"capacity (8 closed-loop clients): {capacity:.0f} req/s", flush=True)
                rate = capacity * args.factor
                results = open_loop(gateway, users, rate, args.seconds, args.timeout)
                phase = summarize(f"{args.factor:g}x capacity", limit, rate, args.seconds, results)
                phases.append(phase)
                print(json.dumps(asdict(phase)), flush=True)
                time.sleep(2)
            finally:
                stop_stack(services)
        record = {
            "capacity_per_s": round(capacity, 1),
            "timeout_s": args.timeout,
            "phases": [asdict(p) for p in phases],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(
            "| FUNNEL_MAX_REQUESTS | offered req/s | sent | OK | refused | other failures | OK p50 ms | OK p99 ms "
            "| refused p99 ms | goodput req/s |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        for p in phases:
            print(
                f"| {p.max_requests} | {p.offered_per_s:.0f} | {p.sent} | {p.ok} | {p.refused} | "
                f"{p.other_failures or 0} | {p.ok_p50_ms} | {p.ok_p99_ms} | {p.refused_p99_ms} | {p.goodput_per_s} |"
            )
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
