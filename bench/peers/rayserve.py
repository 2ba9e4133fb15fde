"""A Ray Serve peer: the stable release's models served by Ray Serve (retrieval → ranking behind an HTTP ingress).

``RayServePeer`` starts ``python -m bench.peers.rayserve serve`` in a session of its own; that process starts a local
Ray (loopback only, its temp and log files under the peer's log directory) and runs the Serve application of
``bench.peers.rayserve_app``. ``client_calls`` is the load generator's client for it: one keep-alive HTTP connection
per thread. ``python -m bench.peers.rayserve smoke`` checks its answers against the same release classes in process
and drives it briefly. Imports nothing heavy at module level: the client runs in load-generator processes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.loadgen import Call, Target
from bench.peers import funnel_answers
from bench.systems import System, by_command, measure
from funnel.cli.stack import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
CLIENT = "bench.peers.rayserve:client_calls"
APP_NAME = "funnel"
RAY_CPUS = 2
READY_TIMEOUT = 600.0  # Ray, three TensorFlow replicas loading and warming a release on 2 busy cores
STOP_GRACE = 60.0
WARMUP_REQUESTS = 5  # run_load's default warm-up, per load-generator process
IDLE_WINDOW = 3.0  # smoke: seconds the peer's idle CPU is measured over
MAX_TEMP_DIR_CHARS = 40  # Ray's socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must fit 107 bytes


class HTTPStatusError(Exception):
    """A non-200 answer; ``code().name`` (HTTP_<status>) is how the load generator counts it."""

    class _Code(NamedTuple):
        name: str

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"expected HTTP 200, got {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status

    def code(self) -> HTTPStatusError._Code:
        return self._Code(f"HTTP_{self.status}")


class InvalidAnswer(Exception):
    """A 200 answer that is not a recommendation."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def check_answer(data: Any, k: int) -> list[int]:
    """The item ids of a peer answer; InvalidAnswer unless it holds 1..k items with integer ids."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= k:
        got = f"{len(items)} items" if isinstance(items, list) else repr(data)[:200]
        raise InvalidAnswer(f"expected an answer with 1 to {k} items, got {got}")
    ids = [item.get("item_id") if isinstance(item, dict) else None for item in items]
    valid = [i for i in ids if isinstance(i, int)]
    if len(valid) != len(ids):
        raise InvalidAnswer(f"expected integer item ids, got {ids[:10]}")
    return valid


def recommend(connection: http.client.HTTPConnection, user_id: str, k: int) -> dict[str, Any]:
    """One POST / {"user_id", "k"} on a keep-alive connection; the decoded answer, checked by check_answer."""
    body = json.dumps({"user_id": user_id, "k": k}).encode()
    try:
        connection.request("POST", "/", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except Exception:
        connection.close()  # the next request reconnects
        raise
    if response.status != 200:
        raise HTTPStatusError(response.status, payload)
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise InvalidAnswer(f"expected a JSON answer, got {payload[:200]!r}: {exc}") from None
    check_answer(data, k)
    return data


def client_calls(target: Target) -> tuple[Callable[[int], Call], Callable[[], None]]:
    """(make_call, close) for the load generator: each thread its own keep-alive HTTP/1.1 connection."""
    host, port = _host_port(target.address)
    users, k = target.user_ids, target.k
    connections: list[http.client.HTTPConnection] = []
    lock = threading.Lock()

    def make_call(thread: int) -> Call:
        connection = http.client.HTTPConnection(host, port, timeout=target.timeout)
        with lock:
            connections.append(connection)

        def call(n: int) -> dict[str, float]:
            data = recommend(connection, users[n % len(users)], k)
            return {
                "retrieval_ms": float(data.get("retrieval_ms", 0.0)),
                "ranking_ms": float(data.get("ranking_ms", 0.0)),
                "total_ms": float(data.get("total_ms", 0.0)),
                "cold_start": float(bool(data.get("cold_start"))),
            }

        return call

    def close() -> None:
        with lock:
            for connection in connections:
                connection.close()

    return make_call, close


# --- the processes -------------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, session id) of every process now, from /proc/<pid>/stat."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))  # ppid, session (stat fields 4 and 6)
    return table


def session_processes(leader: int) -> list[int]:
    """Every process of ``leader``'s session (started with start_new_session) and every descendant of ``leader``:
    Ray's gcs_server, raylet, agents and workers are children and grandchildren, and stay in the session even if
    orphaned."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, sid) in table.items() if sid == leader}
    stack = [leader] if leader in table else []
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(c for c in children.get(pid, ()) if c not in found)
    return sorted(found)


def temp_dir_for(log_dir: Path) -> Path:
    """Ray's temp (and log) directory: ``log_dir/ray``, or a short /tmp directory linked from there when that path
    is too long for Ray's unix sockets."""
    wanted = log_dir / "ray"
    if len(str(wanted)) <= MAX_TEMP_DIR_CHARS:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    short = Path(tempfile.mkdtemp(prefix="rayserve-", dir="/tmp"))
    with contextlib.suppress(FileNotFoundError):
        wanted.unlink()
    wanted.symlink_to(short, target_is_directory=True)
    return short


def peer_env(temp_dir: Path, throughput_optimized: bool = False) -> dict[str, str]:
    """The serving process's environment: Ray local and quiet, TensorFlow on Keras 2, the repository importable;
    ``throughput_optimized`` turns on Ray Serve's documented high-throughput mode (user code and router on the
    replica's own event loop, gRPC between replicas, direct ingress; Ray >= 2.55)."""
    env = dict(os.environ)
    python_path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        RAY_USAGE_STATS_ENABLED="0",  # Ray reports usage to its developers by default: never from here
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # the node address stays 127.0.0.1 (else Ray picks the routed one)
        RAY_AUTH_TOKEN=secrets.token_hex(32),  # token auth, Ray's default, without writing ~/.ray/auth_token
        RAY_TMPDIR=str(temp_dir),
        RAY_SERVE_THROUGHPUT_OPTIMIZED="1" if throughput_optimized else "0",
    )
    return env


class RayServePeer:
    """Context manager: starts Ray + the Serve app on loopback serving the stable release of artifact_root.

    Stock Ray Serve by default; ``throughput_optimized`` sets RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (see peer_env).
    """

    def __init__(
        self,
        artifact_root: Path,
        log_dir: Path,
        port: int = 0,
        cpus: Collection[int] | None = None,
        throughput_optimized: bool = False,
    ) -> None:
        self.artifact_root = Path(artifact_root).resolve()
        self.log_dir = Path(log_dir).resolve()
        self.port = port or free_port()
        self.cpus = tuple(sorted(cpus)) if cpus else ()
        self.throughput_optimized = throughput_optimized
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = self.log_dir / "rayserve.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RayServePeer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        temp_dir = temp_dir_for(self.log_dir)
        command = [
            sys.executable,
            "-m",
            "bench.peers.rayserve",
            "serve",
            "--artifact-root",
            str(self.artifact_root),
            "--port",
            str(self.port),
            "--temp-dir",
            str(temp_dir),
        ]
        if self.cpus:
            command += ["--cpus", ",".join(map(str, self.cpus))]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=REPO,
                env=peer_env(temp_dir, self.throughput_optimized),
                stdin=subprocess.PIPE,  # closed by __exit__ (or by this process dying): the server shuts down
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: every Ray process it starts is found by session id
            )
        try:
            self._wait_ready(READY_TIMEOUT)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until one real request is answered: a user the release knows, k 10."""
        from funnel.release.files import read_seen
        from funnel.release.store import ArtifactStore

        store = ArtifactStore(self.artifact_root)
        stable = store.get_channel("stable")
        if stable is None:
            raise RuntimeError(f"expected a stable release in {self.artifact_root}, found none")
        user = str(read_seen(store.release_dir(stable)).users[0])
        host, port = _host_port(self.address)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"expected the Ray Serve peer to start, but it exited with {self._process.returncode}:\n"
                    + self.log_tail()
                )
            connection = http.client.HTTPConnection(host, port, timeout=30)
            try:
                recommend(connection, user, 10)
                return
            except (OSError, HTTPStatusError, InvalidAnswer, http.client.HTTPException) as exc:
                last = exc  # not listening yet (refused), or the app still deploying (404/503)
            finally:
                connection.close()
            time.sleep(1.0)
        raise TimeoutError(
            f"expected the Ray Serve peer to answer within {timeout:.0f}s, last error: {last!r}\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Every process of the running system: the serving process, gcs_server, raylet, agents, workers."""
        return [] if self._process is None else session_processes(self._process.pid)

    def target(self, user_ids: Sequence[str], k: int = 10) -> Target:
        return Target("peer", self.address, user_ids=tuple(user_ids), k=k, client=CLIENT)

    def __exit__(self, *exc: object) -> None:
        """Ask the serving process to shut Serve and Ray down; then kill whatever of its session is left."""
        process, self._process = self._process, None
        if process is None:
            return
        leader = process.pid
        if process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        stop_process(process, STOP_GRACE)
        deadline = time.monotonic() + 15
        while (left := [p for p, (_, sid) in _proc_table().items() if sid == leader]) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        if left:
            raise RuntimeError(f"expected every process of the Ray Serve peer to end, still running: {left}")


# --- the serving process -------------------------------------------------------------------------------------


def serve(artifact_root: Path, port: int, temp_dir: Path, cpus: Collection[int] | None) -> int:
    """Start local Ray and the Serve app; serve until SIGTERM/SIGINT or stdin closes; then shut both down."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # before Ray starts: gcs_server, raylet and every worker inherit it
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from funnel.release.store import ArtifactStore

    release_id = ArtifactStore(artifact_root).get_channel("stable")
    if release_id is None:
        print(f"expected a stable release in {artifact_root}, found none", file=sys.stderr)
        return 2

    import ray
    from ray import serve as ray_serve

    from bench.peers.rayserve_app import TF_ENV, build

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the peer closed it, or died
        stop.set()

    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        log_to_driver=False,  # the workers' output stays in their log files under the temp dir
        runtime_env={"env_vars": dict(TF_ENV)},
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets a SIGTERM handler of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        no_access_log = {"enable_access_log": False}  # Funnel logs no line per request either
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=no_access_log)
        ray_serve.run(
            build(str(artifact_root), release_id), name=APP_NAME, route_prefix="/", logging_config=no_access_log
        )
        print(f"rayserve: serving release {release_id} on 127.0.0.1:{port}", flush=True)
        threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()
        stop.wait()
        print("rayserve: shutting down", flush=True)
    finally:
        with contextlib.suppress(Exception):
            ray_serve.shutdown()
        ray.shutdown()
    return 0


# --- smoke ---------------------------------------------------------------------------------------------------


def smoke(
    artifact_root: Path,
    log_dir: Path,
    concurrency: int,
    duration: float,
    cpus: Collection[int] | None,
    throughput_optimized: bool = False,
) -> int:
    from funnel.release.files import read_catalog, read_seen
    from funnel.release.store import ArtifactStore

    k = 10
    store = ArtifactStore(artifact_root)
    stable = store.get_channel("stable")
    if stable is None:
        print(f"expected a stable release in {artifact_root}, found none", file=sys.stderr)
        return 2
    release_dir = store.release_dir(stable)
    catalog = read_catalog(release_dir)
    known = [str(u) for u in read_seen(release_dir).users.tolist()]
    step = max(1, len(known) // 200)
    users = known[::step][:200]  # spread over the release's users
    compared = [*users[:3], "__rayserve_smoke_unknown_user__"]  # the unknown user gets the popular items
    t0 = time.monotonic()
    expected = {user: ids.tolist() for user, (ids, _, _) in funnel_answers(artifact_root, compared, k).items()}
    print(f"in-process expectation for {len(compared)} users: {time.monotonic() - t0:.1f}s", flush=True)

    failures = []
    t0 = time.monotonic()
    with RayServePeer(artifact_root, log_dir, cpus=cpus, throughput_optimized=throughput_optimized) as peer:
        mode = "throughput-optimized" if throughput_optimized else "stock"
        print(
            f"peer ({mode} Ray Serve) up at {peer.address} in {time.monotonic() - t0:.1f}s, "
            f"{len(peer.pids())} processes",
            flush=True,
        )
        host, port = _host_port(peer.address)
        connection = http.client.HTTPConnection(host, port, timeout=30)
        for user in [*compared, *users[3:12]]:
            data = recommend(connection, user, k)
            ids = [item["item_id"] for item in data["items"]]
            titles = [item["title"] for item in data["items"]]
            problems = []
            if len(ids) != k:
                problems.append(f"expected {k} items, got {len(ids)}")
            if not set(ids) <= set(catalog):
                problems.append(f"expected catalog ids, got unknown {sorted(set(ids) - set(catalog))[:5]}")
            if any(t != catalog[i].title for i, t in zip(ids, titles) if i in catalog):
                problems.append("expected each title to be its item's catalog title")
            if user in expected and ids != expected[user]:
                problems.append(f"expected Funnel's top {k} {expected[user]}, got {ids}")
            marker = "same as in-process" if user in expected and not problems else ""
            print(f"  user {user}: cold_start={data['cold_start']} top={ids[:5]}... {marker}", flush=True)
            failures += [f"user {user}: {p}" for p in problems]
        connection.close()

        pids = peer.pids()
        if cpus:
            outside = {p: a for p in pids if not (a := os.sched_getaffinity(p)) <= set(cpus)}
            if outside:
                failures.append(f"expected every peer process on CPUs {sorted(cpus)}, got {outside}")
            print(f"all {len(pids)} peer processes pinned to CPUs {sorted(cpus)}: {not outside}", flush=True)
        found = measure(
            System("rayserve", peer.target(users, k), lambda: by_command(peer.pids())), concurrency, duration
        )
        print(f"load at concurrency {concurrency} for {duration:.0f}s: {json.dumps(found)}", flush=True)
        if found["errors"] or not found["rps"]:
            failures.append(f"expected a clean load, got {found['rps']} req/s and {found['errors']} errors")
    print("stopped; left running:", [p for p in pids if Path(f"/proc/{p}").exists()], flush=True)
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    print("smoke:", "FAILED" if failures else "ok")
    return 1 if failures else 0


def _cpus(value: str) -> frozenset[int]:
    try:
        return frozenset(int(c) for c in value.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated CPU numbers, got {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.rayserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run Ray + the Serve app in this process (RayServePeer does)")
    serve_cmd.add_argument("--artifact-root", type=Path, required=True)
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--temp-dir", type=Path, required=True, help="Ray's temp and log directory (absolute)")
    serve_cmd.add_argument("--cpus", type=_cpus, default=None, help="pin Ray to these CPUs, e.g. 0,1")
    smoke_cmd = commands.add_parser("smoke", help="start the peer, check answers against Funnel's, load it briefly")
    smoke_cmd.add_argument("--artifact-root", type=Path, default=REPO / "var" / "artifacts")
    smoke_cmd.add_argument("--log-dir", type=Path, default=REPO / "var" / "peers" / "rayserve")
    smoke_cmd.add_argument("--concurrency", type=int, default=16)
    smoke_cmd.add_argument("--duration", type=float, default=5.0)
    smoke_cmd.add_argument("--cpus", type=_cpus, default=None)
    smoke_cmd.add_argument(
        "--throughput-optimized", action="store_true", help="Ray Serve's high-throughput mode (see peer_env)"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.artifact_root.resolve(), args.port, args.temp_dir.resolve(), args.cpus)
    root, optimized = args.artifact_root.resolve(), args.throughput_optimized
    return smoke(root, args.log_dir, args.concurrency, args.duration, args.cpus, optimized)


if __name__ == "__main__":
    sys.exit(main())
