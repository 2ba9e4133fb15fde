"""`make bench-compose`: the docker-compose stack timed and loaded, with 1 and with 3 retrieval replicas.

Prints the image size, the time from `up` to the gateway serving (on a store that already holds a release), and
closed-loop Recommend throughput through the published port at each retrieval scale. On a machine with few cores
this shows that the topology works (every replica serves, nothing fails), not a speed-up: the replicas share the
same cores. Needs the image (`make images`) and a running dockerd.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import Target, run_load
from funnel.cli.stack import free_port, health_status
from funnel.paths import PROJECT_ROOT

PROJECT = "funnel-bench"
# A full-size release (every user and item, so serving costs what it would), trained briefly: speed, not quality.
TRAIN = ["python", "-m", "trainer", "--unless-stable", "--set-stable", "--no-gate", "--no-refit", "--epochs", "3"]


def compose(env: dict[str, str], *args: str) -> None:
    command = ["docker-compose", "-p", PROJECT, *args]
    subprocess.run(command, cwd=PROJECT_ROOT, env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def up_until_serving(env: dict[str, str], gateway: str, retrieval: int, timeout: float = 600) -> float:
    """Seconds from `docker-compose up -d` to the gateway reporting SERVING."""
    started = time.monotonic()
    compose(env, "up", "-d", f"--scale=retrieval={retrieval}", "--scale=ranking=1")
    while health_status(gateway) != "SERVING":
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the gateway at {gateway} was not SERVING after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compose", description=__doc__)
    parser.add_argument("--image", default=os.environ.get("FUNNEL_IMAGE", "funnel:latest"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "var" / "bench" / "compose.json")
    args = parser.parse_args(argv)
    port = free_port()
    gateway = f"127.0.0.1:{port}"
    env = {**os.environ, "FUNNEL_IMAGE": args.image, "FUNNEL_GATEWAY_PORT": str(port)}
    inspect = ["docker", "image", "inspect", "-f", "{{.Size}}", args.image]
    size = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()
    record: dict[str, object] = {"image": args.image, "image_bytes": int(size), "concurrency": args.concurrency}
    try:
        started = time.monotonic()
        compose(env, "run", "--rm", "trainer", *TRAIN)
        record["first_release_seconds"] = round(time.monotonic() - started, 1)
        users = [str(u) for u in range(1, 944)]
        for retrieval in (1, 3):
            compose(env, "down")  # the volume (and its release) stays: `up` times loading, not training
            record[f"up_to_serving_seconds_retrieval{retrieval}"] = round(up_until_serving(env, gateway, retrieval), 1)
            result = run_load(Target("recommend", gateway, user_ids=tuple(users)), args.concurrency, args.duration)
            summary = result.summary()
            keys = ("rps", "p50_ms", "p99_ms", "errors", "degraded")
            record[f"retrieval{retrieval}"] = {key: summary.get(key, 0) for key in keys}
            print(json.dumps({retrieval: record[f"retrieval{retrieval}"]}), flush=True)
    finally:
        compose(env, "down", "-v")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
