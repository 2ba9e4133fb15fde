"""The `funnel` command: recommend for a user, show status, run the demo, and start or stop a local stack."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from funnel.cli import stack
from funnel.client import (
    CLIENT_TLS_PREFIX,
    AdminClient,
    ClientTls,
    format_release,
    promote_when_ready,
    recommend,
    rollout_state,
)
from funnel.data.loaders import load_dataset
from funnel.paths import PROJECT_ROOT, VAR, default_artifact_root, default_cache_dir
from funnel.release.store import ArtifactStore, RolloutState, new_release_id
from funnel.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    ranking_pb2_grpc,
    retrieval_pb2_grpc,
)

DEFAULT_ADDRESSES = {name: f"127.0.0.1:{port}" for name, port in stack.DEFAULT_PORTS.items()}
STATUS_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "gateway": gateway_pb2_grpc.GatewayServiceStub,
    "retrieval": retrieval_pb2_grpc.RetrievalServiceStub,
    "ranking": ranking_pb2_grpc.RankingServiceStub,
}


def _artifact_root(value: str | None) -> Path:
    return Path(value) if value else default_artifact_root()


def format_recommendations(user_id: str, response: gateway_pb2.RecommendResponse) -> str:
    """A readable table of a RecommendResponse."""
    width = max([len(i.title) for i in response.items] + [5])
    lines = [
        f"Top {len(response.items)} for user {user_id} — release {response.release_id}",
        f"{'rank':>4}  {'item':>6}  {'title':<{width}}  {'year':>4}  {'score':>7}  {'rating':>6}  {'retrieval':>9}",
    ]
    for rank, item in enumerate(response.items, 1):
        year = str(item.year) if item.year else ""
        rating = f"{item.predicted_rating:.2f}" if item.predicted_rating else "-"
        lines.append(
            f"{rank:>4}  {item.item_id:>6}  {item.title:<{width}}  {year:>4}  {item.score:>7.3f}  "
            f"{rating:>6}  {item.retrieval_score:>9.3f}"
        )
    t = response.timings
    lines.append(
        f"stages: retrieval {response.retrieval_release_id or '-'} ({t.retrieval_ms:.1f} ms), "
        f"ranking {response.ranking_release_id or '-'} ({t.ranking_ms:.1f} ms), total {t.total_ms:.1f} ms"
    )
    if response.cold_start:
        lines.append("cold start: the release does not know this user; showing popular items")
    if response.degraded:
        lines.append("DEGRADED: " + "; ".join(response.degraded_reasons))
    return "\n".join(lines)


def _tls(args: argparse.Namespace) -> ClientTls:
    return ClientTls(args.tls_ca, args.tls_cert, args.tls_key)


def _cmd_recommend(args: argparse.Namespace) -> int:
    try:
        response = recommend(
            args.gateway, args.user_id, args.k, args.release, args.include_seen, args.timeout, _tls(args)
        )
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(format_recommendations(args.user_id, response))
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    status = stack.health_status(args.target, args.timeout, _tls(args))
    print(f"{args.target} {status}")
    return 0 if status == "SERVING" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    for name, stub_class in STATUS_STUBS.items():
        address = getattr(args, name)
        health = stack.health_status(address, tls=_tls(args))
        line = f"{name:<10} {address:<21} {health}"
        if health != "UNREACHABLE":
            with _tls(args).connect(address) as channel:
                try:
                    status = stub_class(channel).GetStatus(common_pb2.GetStatusRequest(), timeout=5)
                    line += "".join("\n" + format_release(r) for r in status.releases)
                except grpc.RpcError as exc:
                    line += f" (status: {exc.code().name})"
        print(line)
    return 0


def _print_rollout(state: RolloutState) -> None:
    candidate = f"{state.candidate} at {state.fraction:.0%} of users" if state.candidate else "none"
    print(f"stable:    {state.stable or 'none'}\ncandidate: {candidate}")


def _cmd_rollout(args: argparse.Namespace) -> int:
    try:
        with AdminClient(args.admin, args.token or None, tls=_tls(args)) as admin:
            if args.action == "status":
                status = admin.status()
                _print_rollout(rollout_state(status.rollout))
                for service in status.services:
                    print(f"{service.service:<10} {service.target or '':<21} {service.error}".rstrip())
                    for r in service.releases:
                        print(format_release(r))
                print("published: " + ", ".join(status.published_release_ids))
                return 0
            actions = {
                "start": lambda: admin.start_rollout(args.release_id, args.fraction),
                "fraction": lambda: admin.set_fraction(args.fraction),
                "promote": lambda: admin.promote(args.release_id or ""),
                "rollback": admin.rollback,
            }
            _print_rollout(actions[args.action]())
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


def _train(artifact_root: Path, data: str, release_id: str) -> None:
    """Train and publish ``release_id`` with the trainer CLI (its own process), ungated: into an empty store as the
    stable release; beside an existing stable release, published only (a rollout makes it stable)."""
    command = [
        sys.executable,
        "-m",
        "trainer",
        "--artifact-root",
        str(artifact_root),
        "--data",
        data,
        "--cache-dir",
        str(default_cache_dir()),
        "--release-id",
        release_id,
        "--no-gate",
    ]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, stdin=subprocess.DEVNULL)


def _cmd_demo(args: argparse.Namespace) -> int:
    artifact_root = _artifact_root(args.artifact_root)
    release_id = new_release_id()
    print(f"== training on {args.data} into {artifact_root} (release {release_id})", flush=True)
    _train(artifact_root, args.data, release_id)
    print("== starting retrieval, ranking and gateway as separate processes", flush=True)
    started = time.monotonic()
    services = stack.start_stack(artifact_root, VAR / "log" / "demo")
    try:
        print(
            f"   all SERVING after {time.monotonic() - started:.1f}s: "
            + ", ".join(f"{s.name}@{s.address}" for s in services.values()),
            flush=True,
        )
        if ArtifactStore(artifact_root).get_channel("stable") != release_id:
            print(
                f"== rolling {release_id} out through the admin API: candidate, then promoted once loaded", flush=True
            )
            with AdminClient(services["gateway"].admin_address) as admin:
                promote_when_ready(admin, release_id)
        response = recommend(services["gateway"].address, args.user_id, args.k)
        print(format_recommendations(args.user_id, response))
        if response.release_id != release_id:
            print(f"error: expected release {release_id}, served by {response.release_id}", file=sys.stderr)
            return 1
        interactions = load_dataset(args.data, default_cache_dir()).interactions
        rated = set(interactions.item_ids[interactions.user_ids == args.user_id].tolist())
        again = sorted(rated & {item.item_id for item in response.items})
        print(
            f"   user {args.user_id} rated {len(rated)} films in {args.data}; "
            f"{len(again)} of them in this top {args.k}{': ' + str(again) if again else ''}"
        )
        if again:
            print("error: recommended films the user already rated", file=sys.stderr)
            return 1
    finally:
        codes = stack.stop_stack(services)
        print("== stopped services (exit codes: " + ", ".join(f"{n} {c}" for n, c in codes.items()) + ")")
    return 0


def _pid_file(name: str) -> Path:
    return VAR / "run" / f"{name}.pid"


def _running_pid(name: str) -> int | None:
    """The pid in ``name``'s pid file when that process is alive and runs that service; a stale file (the process
    is gone, or its pid now belongs to another program) is removed."""
    path = _pid_file(name)
    try:
        pid = int(path.read_text().split()[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pid = -1
    if pid > 0 and stack.runs_module(pid, stack.MODULES[name]):
        return pid
    path.unlink(missing_ok=True)
    print(f"removed stale pid file {path} ({name} is not running)")
    return None


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        layout = stack.CpuLayout.of(args.layout, os.sched_getaffinity(0))
    except ValueError as exc:
        print(f"error: --layout {args.layout}: {exc}", file=sys.stderr)
        return 2
    running = [name for name in stack.SERVICES if _running_pid(name) is not None]
    if running:
        print(f"error: already running ({', '.join(running)}); run `make down` first", file=sys.stderr)
        return 1
    artifact_root = _artifact_root(args.artifact_root)
    store = ArtifactStore(artifact_root)
    if store.get_channel("stable") is None:
        release_id = new_release_id()
        print(f"== no stable release in {artifact_root}: training one on {args.data}", flush=True)
        _train(artifact_root, args.data, release_id)
    services = stack.start_stack(
        artifact_root,
        VAR / "log",
        ports=stack.DEFAULT_PORTS,
        cpus=layout.services,
        metrics_ports=stack.DEFAULT_METRICS_PORTS,
    )
    for name, service in services.items():
        _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        _pid_file(name).write_text(f"{service.process.pid}\n")
        print(
            f"{name:<10} {service.address}  pid {service.process.pid}  log {service.log_path}  "
            f"metrics http://{service.metrics_address}/metrics"
        )
    print(f"admin      {DEFAULT_ADDRESSES['admin']}  (the gateway's AdminService: funnel rollout ...)")
    print(f"try: .venv/bin/funnel recommend 42   (artifact root {artifact_root})")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    for name in reversed(stack.SERVICES):
        pid = _running_pid(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while stack.runs_module(pid, stack.MODULES[name]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if stack.runs_module(pid, stack.MODULES[name]):
            os.kill(pid, signal.SIGKILL)
        _pid_file(name).unlink(missing_ok=True)
        print(f"stopped {name} (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funnel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tls = argparse.ArgumentParser(add_help=False)
    group = tls.add_argument_group("TLS (servers started with FUNNEL_TLS_CERT)")
    for name, text in (("ca", "PEM CA that signed the server"), ("cert", "PEM client certificate (mutual TLS)")):
        env = f"{CLIENT_TLS_PREFIX}_{name.upper()}"
        group.add_argument(f"--tls-{name}", default=os.environ.get(env, ""), help=f"{text} [env {env}]")
    env = f"{CLIENT_TLS_PREFIX}_KEY"
    group.add_argument("--tls-key", default=os.environ.get(env, ""), help=f"PEM key of --tls-cert [env {env}]")

    p = sub.add_parser("recommend", parents=[tls], help="top-k items for a user, through the gateway")
    p.add_argument("user_id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--gateway", default=os.environ.get("FUNNEL_GATEWAY_TARGET", DEFAULT_ADDRESSES["gateway"]))
    p.add_argument("--release", default="", help="pin a release id")
    p.add_argument("--include-seen", action="store_true", help="keep items the user already rated")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    p.set_defaults(run=_cmd_recommend)

    p = sub.add_parser("status", parents=[tls], help="health and loaded releases of each service")
    for name in STATUS_STUBS:
        p.add_argument(f"--{name}", default=DEFAULT_ADDRESSES[name])
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser(
        "health", parents=[tls], help="exit 0 when a server reports SERVING on grpc.health.v1 (container healthchecks)"
    )
    p.add_argument(
        "target",
        nargs="?",
        default=os.environ.get("FUNNEL_HEALTH_TARGET", DEFAULT_ADDRESSES["gateway"]),
        help="host:port [env FUNNEL_HEALTH_TARGET]",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    p.set_defaults(run=_cmd_health)

    for name, run, text in (
        ("demo", _cmd_demo, "train, serve, recommend for one user, stop"),
        ("up", _cmd_up, "start the three services in the background on the default ports"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--artifact-root", default=None, help="default: $FUNNEL_ARTIFACT_ROOT or var/artifacts")
        p.add_argument("--data", default="movielens-100k", help="dataset spec (see trainer --help)")
        if name == "demo":
            p.add_argument("--user-id", default="42")
            p.add_argument("-k", type=int, default=10)
        else:
            p.add_argument(
                "--layout",
                choices=stack.LAYOUTS,
                default="shared",
                help="shared: every service on every CPU; pinned: the gateway alone on the lowest CPU, "
                "the stages on the others (faster on a small machine; needs 2 CPUs)",
            )
        p.set_defaults(run=run)
    sub.add_parser("down", help="stop the services started by `up`").set_defaults(run=_cmd_down)

    p = sub.add_parser("rollout", parents=[tls], help="blue-green rollout through the gateway's AdminService")
    p.add_argument(
        "--admin",
        default=os.environ.get("FUNNEL_ADMIN_TARGET", DEFAULT_ADDRESSES["admin"]),
        help="the gateway's AdminService address (FUNNEL_ADMIN_ADDRESS of the gateway) [env FUNNEL_ADMIN_TARGET]",
    )
    p.add_argument("--token", default=os.environ.get("FUNNEL_ADMIN_TOKEN", ""), help="[env FUNNEL_ADMIN_TOKEN]")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="rollout state and the releases each service holds")
    start = actions.add_parser("start", help="make a published release the candidate")
    start.add_argument("release_id")
    start.add_argument("--fraction", type=float, default=0.1, help="share of users, 0..1 (default 0.1)")
    actions.add_parser("fraction", help="change the candidate's share of users").add_argument("fraction", type=float)
    actions.add_parser("promote", help="the candidate becomes stable").add_argument("release_id", nargs="?")
    actions.add_parser("rollback", help="drop the candidate")
    p.set_defaults(run=_cmd_rollout)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
