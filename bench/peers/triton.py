"""The PyTriton peer: the stable release served by NVIDIA Triton (PyTriton, dynamic batching), and its load client."""

# The server (triton_app.py) runs in its own venv (scripts/peer-venv-triton.sh): PyTriton's Python-backend stub
# needs Debian's python3.11. This module runs in Funnel's venv and imports neither PyTriton nor TensorFlow (the
# smoke test's reference computation aside); its client speaks Triton's gRPC protocol through tritonclient.

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.loadgen import Call, Target
from bench.peers import funnel_answers
from bench.systems import System, by_command, measure, process_tree
from funnel.cli.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "var" / "peers" / "triton-venv"
STUB_VENV = ROOT / "var" / "peers" / "triton-stub-venv"  # the Python of Triton's backend stubs (numpy 1)
VENV_SCRIPT = ROOT / "scripts" / "peer-venv-triton.sh"
MODEL = "recommend"  # the pipeline model; "retrieval" and "ranking" are its stages
START_TIMEOUT = 600.0  # seconds for the release to load and the first request to be answered
STOP_GRACE = 45.0  # seconds between SIGTERM and SIGKILL (PyTriton gives tritonserver 30 s to exit)
CLIENT = "bench.peers.triton:client_calls"


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks after boot; with the pid it names one process), None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _grpc() -> Any:
    """tritonclient.grpc, imported when first needed (the load generator's spawned workers import this module)."""
    import tritonclient.grpc as grpcclient

    return grpcclient


def _inputs(grpcclient: Any, user_id: str, k: int) -> list[Any]:
    """The recommend model's inputs for one request: user_id BYTES [1, 1], k INT32 [1, 1]."""
    user = grpcclient.InferInput("user_id", [1, 1], "BYTES")
    user.set_data_from_numpy(np.array([[user_id.encode("utf-8")]], dtype=np.object_))
    top = grpcclient.InferInput("k", [1, 1], "INT32")
    top.set_data_from_numpy(np.array([[k]], dtype=np.int32))
    return [user, top]


def _outputs(grpcclient: Any) -> list[Any]:
    return [grpcclient.InferRequestedOutput(name) for name in ("item_ids", "scores", "cold_start")]


def recommend(
    client: Any, user_id: str, k: int, timeout: float = 5.0, inputs: list[Any] | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(item ids, order scores, cold start) the peer answers for one user, padding dropped."""
    grpcclient = _grpc()
    result = client.infer(
        MODEL, inputs or _inputs(grpcclient, user_id, k), outputs=_outputs(grpcclient), client_timeout=timeout
    )
    ids, scores = result.as_numpy("item_ids")[0], result.as_numpy("scores")[0]
    keep = ids >= 0
    return ids[keep], scores[keep], bool(result.as_numpy("cold_start").reshape(-1)[0])


def client_calls(target: Target) -> tuple[Callable[[int], Call], Callable[[], None]]:
    """(make_call, close) for the load generator: one gRPC client (one connection) per process, a request per
    user built once; a call asks the recommend model for user ``n % len(user_ids)`` and decodes the answer."""
    grpcclient = _grpc()
    if target.kind != "peer" or not target.user_ids:
        raise ValueError(f"expected a peer target with user ids, got kind {target.kind!r} with {target.user_ids!r}")
    client = grpcclient.InferenceServerClient(target.address)
    requests = [_inputs(grpcclient, user, target.k) for user in target.user_ids]
    outputs = _outputs(grpcclient)

    def make_call(thread: int) -> Call:
        def call(n: int) -> None:
            result = client.infer(MODEL, requests[n % len(requests)], outputs=outputs, client_timeout=target.timeout)
            result.as_numpy("item_ids")

        return call

    return make_call, client.close


def stable_release(artifact_root: Path) -> Path:
    """The directory of the release the stable channel names (no TensorFlow needed)."""
    from funnel.release.store import ArtifactStore

    store = ArtifactStore(artifact_root)
    stable = store.rollout().stable
    if stable is None:
        raise RuntimeError(f"expected a stable release in {store.channels_dir}, found the channel unset")
    return store.release_dir(stable)


class TritonPeer:
    """Context manager: starts triton_app.py in the peer venv, serving the stable release of artifact_root on
    loopback (Triton's HTTP, gRPC and metrics ports picked free); ``address`` is the gRPC endpoint."""

    def __init__(self, artifact_root: Path, log_dir: Path, cpus: Collection[int] | None = None) -> None:
        self.artifact_root = Path(artifact_root).resolve()
        self.log_dir = Path(log_dir)
        self.cpus = frozenset(cpus) if cpus else None
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        self.address = f"127.0.0.1:{self.ports['grpc']}"
        self.log_path = self.log_dir / "triton.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._seen: dict[int, int] = {}  # pid -> start time of every process of the system seen so far

    def __enter__(self) -> TritonPeer:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        subprocess.run([str(VENV_SCRIPT)], check=True, stdout=self._log, stderr=subprocess.STDOUT)
        probe_user = _first_user(stable_release(self.artifact_root))
        self._tmp = Path(tempfile.mkdtemp(prefix="funnel-triton-"))  # short: ZeroMQ's ipc socket paths live here
        command = [
            str(VENV / "bin" / "python"),
            "-m",
            "bench.peers.triton_app",
            "--artifact-root",
            str(self.artifact_root),
            "--workspace",
            str(self._tmp / "workspace"),
            "--http-port",
            str(self.ports["http"]),
            "--grpc-port",
            str(self.ports["grpc"]),
            "--metrics-port",
            str(self.ports["metrics"]),
            "--stub-env",
            str(STUB_VENV),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        self._proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if self.cpus:  # before the interpreter starts a thread: its threads and children inherit the mask
            os.sched_setaffinity(self._proc.pid, self.cpus)
        self._wait_ready(probe_user)

    def _wait_ready(self, user_id: str) -> None:
        grpcclient = _grpc()
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = grpcclient.InferenceServerClient(self.address)
        try:
            last = "no answer yet"
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"expected the Triton peer to serve, but triton_app exited with code {self._proc.returncode}"
                        f"; log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    ids, _, _ = recommend(client, user_id, 10, timeout=30.0)
                    if len(ids):
                        self.pids()
                        return
                    last = f"an empty answer for user {user_id!r}"
                except Exception as exc:  # not up yet: connection refused, model not ready
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(1.0)
        finally:
            client.close()
        raise TimeoutError(
            f"expected the Triton peer to answer within {START_TIMEOUT:.0f}s, last got {last}; log {self.log_path}"
        )

    def pids(self) -> list[int]:
        """Every process of the running system: triton_app (PyTriton and the inference functions), tritonserver
        and its Python-backend stubs."""
        if self._proc is None:
            return []
        pids = process_tree(self._proc.pid)
        for pid in pids:
            start = _start_time(pid)
            if start is not None:
                self._seen.setdefault(pid, start)
        return pids

    def target(self, user_ids: Sequence[str], k: int = 10) -> Target:
        return Target("peer", self.address, user_ids=tuple(user_ids), k=k, client=CLIENT)

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is not None:
            self.pids()  # remember everything alive now: children outlive a killed parent
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # triton_app stops tritonserver (SIGINT) and cleans up
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
            self._kill_left(proc.pid)
            proc.wait()
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _alive(self) -> list[int]:
        """Processes seen earlier that still run (same pid and start time; zombies count as gone)."""
        alive = []
        for pid, start in self._seen.items():
            with contextlib.suppress(OSError, IndexError):
                rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                if int(rest[19]) == start and rest[0] != "Z":
                    alive.append(pid)
        return alive

    def _kill_left(self, app_pid: int) -> None:
        left = self._alive()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._alive()
        if left:
            raise RuntimeError(f"expected every Triton peer process gone after SIGKILL, still running: {left}")
        for shm in Path("/dev/shm").glob(f"pytrtion{app_pid}-*"):  # PyTriton's shm prefix
            with contextlib.suppress(OSError):
                shm.unlink()
        if self._tmp is not None:  # the model directories a killed tritonserver leaves (those naming our workspace)
            for folder in Path("/tmp").glob("folder??????"):
                with contextlib.suppress(OSError):
                    if str(self._tmp) in (folder / "config.pbtxt").read_text(errors="replace"):
                        shutil.rmtree(folder, ignore_errors=True)


def _first_user(release: Path) -> str:
    from funnel.release.files import read_seen

    users = read_seen(release).users
    if not len(users):
        raise RuntimeError(f"expected users in {release}'s seen items, found none")
    return str(users[0])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def smoke(artifact_root: Path, log_dir: Path, k: int = 10, concurrency: int = 16, duration: float = 5.0) -> int:
    """Start the peer, check its answers against the release classes, drive it briefly, stop it."""
    from funnel.release.files import read_catalog, read_seen

    release = stable_release(artifact_root)
    catalog = set(read_catalog(release))
    users = [str(u) for u in read_seen(release).users[:200]]
    checked = [*users[:4], "__triton_smoke_unknown_user__"]
    failures: list[str] = []
    started = time.monotonic()
    with TritonPeer(artifact_root, log_dir) as peer:
        print(f"peer ready in {time.monotonic() - started:.1f}s at {peer.address}; processes {peer.pids()}")
        client = _grpc().InferenceServerClient(peer.address)
        answers = {user: recommend(client, user, k) for user in checked}
        client.close()
        for user, (ids, _, cold) in answers.items():
            print(f"user {user}: cold_start={cold} items {ids.tolist()}")
            if len(ids) != k:
                failures.append(f"user {user}: expected {k} items, got {len(ids)}")
            if not set(ids.tolist()) <= catalog:
                failures.append(f"user {user}: expected catalog ids, got {sorted(set(ids.tolist()) - catalog)}")
        reference = funnel_answers(artifact_root, checked, k)
        for user, (ids, scores, cold) in reference.items():
            got_ids, got_scores, got_cold = answers[user]
            same = np.array_equal(ids, got_ids) and cold == got_cold
            close = same and np.allclose(scores, got_scores, rtol=1e-4, atol=1e-5)
            print(
                f"user {user}: top {k} equals the release classes' ({'same' if same else 'DIFFERENT'} ids, "
                f"scores {'close' if close else 'differ'})"
            )
            if not same:
                failures.append(f"user {user}: expected ids {ids.tolist()}, got {got_ids.tolist()}")
        found = measure(System("triton", peer.target(users, k), lambda: by_command(peer.pids())), concurrency, duration)
        print(f"load at concurrency {concurrency} for {duration:.0f}s: {json.dumps(found)}")
        if found["errors"] or not found["rps"]:
            failures.append(f"load: expected answers and no errors, got {found['rps']} req/s, {found['errors']} errors")
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    print("smoke", "failed" if failures else "passed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("smoke", help="start the peer, check answers, run a short load, stop")
    run.add_argument("--artifact-root", type=Path, default=ROOT / "var" / "artifacts")
    run.add_argument("--log-dir", type=Path, default=ROOT / "var" / "peers" / "triton-smoke")
    run.add_argument("--k", type=int, default=10)
    run.add_argument("--concurrency", type=int, default=16)
    run.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    return smoke(args.artifact_root, args.log_dir, args.k, args.concurrency, args.duration)


if __name__ == "__main__":
    raise SystemExit(main())
