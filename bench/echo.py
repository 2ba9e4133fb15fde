"""The floor: a unary gRPC echo server (a generic handler over raw bytes), run as its own process.

``python -m bench.echo --address 127.0.0.1:0`` serves ``/funnel.bench.Echo/Echo``, answering every request with
its own bytes, on the same kind of server the Funnel services run (a thread pool of the same size, the same
message limits). It prints ``listening on <port>`` once bound and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path

import grpc

from bench.loadgen import ECHO_METHOD
from funnel.cli.stack import free_port, python_module, stop_process
from funnel.serving.server import build_server

SERVICE, METHOD = ECHO_METHOD.strip("/").split("/")
ROOT = Path(__file__).resolve().parent.parent


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def create_server(address: str, max_workers: int = 160) -> tuple[grpc.Server, int]:
    """Build and start an echo server with the services' server options; returns it and its port."""
    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_echo)})
    server, port, _ = build_server(
        address, lambda s: s.add_generic_rpc_handlers((handler,)), [SERVICE], max_workers=max_workers
    )
    server.start()
    return server, port


def echo_once(address: str, payload: bytes, timeout: float = 5.0) -> bytes:
    with grpc.insecure_channel(address) as channel:
        echo = channel.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)  # raw bytes
        return echo(payload, timeout=timeout)


class EchoProcess:
    """An echo server in a child process (confined to ``cpus`` when given): ``with EchoProcess(log) as echo:
    echo.address``."""

    def __init__(
        self, log_path: Path, max_workers: int = 160, timeout: float = 60.0, cpus: Collection[int] | None = None
    ) -> None:
        self.log_path, self.max_workers, self.timeout, self.cpus = log_path, max_workers, timeout, cpus
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def __enter__(self) -> EchoProcess:
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                python_module(
                    "bench.echo", ["--address", self.address, "--max-workers", str(self.max_workers)], self.cpus
                ),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"echo server exited with {self.process.returncode}; log {self.log_path}")
            try:
                echo_once(self.address, b"ping", timeout=1.0)
                return self
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    problem = f"echo server at {self.address} did not answer within {self.timeout:.0f}s"
                    raise TimeoutError(problem) from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process, grace=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--max-workers", type=int, default=160)
    args = parser.parse_args(argv)
    server, port = create_server(args.address, args.max_workers)
    print(f"listening on {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
