"""Starts the three services as separate processes on loopback, waits until healthy, and stops them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from funnel.client import PLAINTEXT, ClientTls
from funnel.paths import PROJECT_ROOT

SERVICES = ("retrieval", "ranking", "gateway")
MODULES = {"retrieval": "retrieval_service", "ranking": "ranking_service", "gateway": "gateway"}
DEFAULT_PORTS = {"gateway": 50051, "retrieval": 50052, "ranking": 50053, "admin": 50054}  # admin: the gateway's
DEFAULT_METRICS_PORTS = {"gateway": 50061, "retrieval": 50062, "ranking": 50063}  # Prometheus /metrics over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_address: str = ""  # the gateway's AdminService
    metrics_address: str = ""  # http://<this>/metrics, when served

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def runs_module(pid: int, module: str) -> bool:
    """True when process ``pid`` is alive (not a zombie) and is ``python -m module`` (possibly via funnel.cli.pinned):
    a pid file's process, not whatever program reused its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"-m" and b == module.encode() for a, b in zip(argv, argv[1:]))


def health_status(address: str, timeout: float = 1.0, tls: ClientTls = PLAINTEXT) -> str:
    """The overall grpc.health.v1 status of the server at ``address`` ('UNREACHABLE' if it does not answer)."""
    with tls.connect(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def wait_serving(service: ServiceProcess, timeout: float, tls: ClientTls = PLAINTEXT) -> None:
    """Block until the service reports SERVING; raise with its log if it exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        if health_status(service.address, tls=tls) == "SERVING":
            return
        time.sleep(0.2)
    raise TimeoutError(f"{service.name} at {service.address} not SERVING after {timeout:.0f}s:\n{service.log_tail()}")


LAYOUTS = ("shared", "pinned")


def pinned_layout(available: Collection[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(front, rest) CPUs of the pinned layout: the lowest allowed CPU for the server clients call, the others for
    the stages (and a load generator on the same machine)."""
    cpus = sorted(available)
    if len(cpus) < 2:
        raise ValueError(f"the pinned layout needs at least 2 allowed CPUs, got {cpus}")
    return frozenset(cpus[:1]), frozenset(cpus[1:])


@dataclass(frozen=True)
class CpuLayout:
    """Where a stack's processes run: ``front`` for the server clients call (the gateway, or a benchmark's echo
    server), ``rest`` for the stages (and a load generator on the same machine); None for both in the shared
    layout (every CPU)."""

    name: str
    front: frozenset[int] | None = None
    rest: frozenset[int] | None = None

    @classmethod
    def of(cls, name: str, available: Collection[int]) -> CpuLayout:
        """Layout ``name`` over the CPUs ``available``; ValueError when it cannot be laid out there."""
        if name not in LAYOUTS:
            raise ValueError(f"expected a layout in {LAYOUTS}, got {name!r}")
        return cls(name) if name == "shared" else cls(name, *pinned_layout(available))

    @property
    def services(self) -> dict[str, frozenset[int]] | None:
        """funnel.cli.stack.start_stack's ``cpus``: the gateway in front, the stages with the rest."""
        if self.front is None or self.rest is None:
            return None
        return {"gateway": self.front, "retrieval": self.rest, "ranking": self.rest}


def python_module(module: str, args: Sequence[str] = (), cpus: Collection[int] | None = None) -> list[str]:
    """The command that runs ``python -m module args``, confined to ``cpus`` when given (funnel.cli.pinned)."""
    if not cpus:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "funnel.cli.pinned", ",".join(map(str, sorted(cpus))), "-m", module, *args]


def start_service(
    name: str,
    address: str,
    artifact_root: Path,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    cpus: Collection[int] | None = None,
    module: str = "",
    project: Path = PROJECT_ROOT,
) -> ServiceProcess:
    """Start service ``name`` (its own module, or ``module`` serving in its place) from the checkout at ``project``
    and return at once."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = {
        **os.environ,
        "FUNNEL_ARTIFACT_ROOT": str(Path(artifact_root).resolve()),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            python_module(module or MODULES[name], ["--address", address, *(args or [])], cpus),
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServiceProcess(name, address, process, log_path)


def start_stack(
    artifact_root: Path,
    log_dir: Path,
    ports: dict[str, int] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 180.0,
    cpus: Mapping[str, Collection[int]] | None = None,
    tls: ClientTls = PLAINTEXT,
    metrics_ports: Mapping[str, int] | None = None,
    modules: Mapping[str, str] | None = None,
    project: Path = PROJECT_ROOT,
) -> dict[str, ServiceProcess]:
    """Start retrieval, ranking and gateway (each its own process, confined to ``cpus[name]`` when given) and
    wait until all three are SERVING (asked over ``tls`` when the services serve TLS). ``ports`` maps each service,
    and "admin" (the gateway's AdminService), to a port; free ones by default. With ``metrics_ports`` (a port
    per service, 0: a free one) each serves Prometheus metrics there. ``modules`` runs other modules in some
    services' place (the benchmark's pass-through stages); ``project`` runs the code of another checkout (the
    benchmark's comparisons of two commits)."""
    ports = ports or {name: free_port() for name in (*SERVICES, "admin")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    gateway_args = [
        "--retrieval-target",
        addresses["retrieval"],
        "--ranking-target",
        addresses["ranking"],
        "--admin-address",
        addresses["admin"],
    ]
    metrics = {name: f"127.0.0.1:{port or free_port()}" for name, port in (metrics_ports or {}).items()}
    stack: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            args = [*(gateway_args if name == "gateway" else [])]
            if name in metrics:
                args += ["--metrics-address", metrics[name]]
            stack[name] = start_service(
                name,
                addresses[name],
                artifact_root,
                log_dir,
                extra_env,
                args,
                (cpus or {}).get(name),
                (modules or {}).get(name, ""),
                project,
            )
            stack[name].metrics_address = metrics.get(name, "")
        stack["gateway"].admin_address = addresses["admin"]
        for service in stack.values():
            wait_serving(service, timeout, tls)
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM (graceful drain), then SIGKILL if it has not exited within ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def stop_stack(stack: dict[str, ServiceProcess]) -> dict[str, int]:
    """Stop the gateway first (no new traffic), then the stages; return each exit code."""
    return {name: stop_process(stack[name].process) for name in reversed(SERVICES) if name in stack}
