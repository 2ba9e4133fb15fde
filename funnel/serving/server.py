"""gRPC server bootstrap shared by every service: error mapping, health, reflection, graceful drain on SIGTERM."""

from __future__ import annotations

import collections
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from funnel.errors import FunnelError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class RequestLog:
    """Counts requests by (method, release, status) and logs the tally periodically: what this process served,
    and for batch calls how many queries they carried."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._queries: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def record(self, method: str, release_id: str, code: grpc.StatusCode, queries: int = 0) -> None:
        key = (method, release_id or "-", code.name)
        with self._lock:
            self._counts[key] += 1
            if queries:
                self._queries[key] += queries

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
            queries, self._queries = self._queries, collections.Counter()
        for key, n in sorted(counts.items()):
            method, release_id, code = key
            batch = f" queries={queries[key]} (mean batch {queries[key] / n:.1f})" if queries[key] else ""
            log.info("served %s release=%s status=%s count=%d%s", method, release_id, code, n, batch)

    def start(self, interval: float) -> None:
        def loop() -> None:
            while True:
                threading.Event().wait(interval)
                self.flush()

        threading.Thread(target=loop, name="request-log", daemon=True).start()


REQUESTS = RequestLog()


def rpc(method: F) -> F:
    """Map domain errors to their status code; anything else becomes INTERNAL, logged with its traceback."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        release_id = getattr(request, "release_id", "")
        try:
            response = method(self, request, context)
        except FunnelError as exc:
            REQUESTS.record(name, release_id, exc.code)
            context.abort(exc.code, str(exc))
        except Exception:
            REQUESTS.record(name, release_id, grpc.StatusCode.INTERNAL)
            log.exception("unhandled error in %s", method.__qualname__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        REQUESTS.record(
            name, getattr(response, "release_id", release_id), grpc.StatusCode.OK, len(getattr(request, "queries", ()))
        )
        return response

    return wrapper  # type: ignore[return-value]


class Health:
    """The standard grpc.health.v1 servicer, with the overall and per-service status set together."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self.servicer = grpc_health.HealthServicer(experimental_non_blocking=True)
        self._names = ["", *service_names]
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._names:
            self.servicer.set(name, status)

    def shutdown(self) -> None:
        self.servicer.enter_graceful_shutdown()


def build_server(
    address: str,
    register: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    *,
    max_workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    health: Health | None = None,
) -> tuple[grpc.Server, int, Health]:
    """Create (not start) a server with the given servicers, health and reflection; returns the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    names = list(service_names)
    health_ = health or Health(names)
    health_pb2_grpc.add_HealthServicer_to_server(health_.servicer, server)
    reflection.enable_server_reflection([*names, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"could not bind {address!r}: expected host:port that is free")
    return server, port, health_


def serve_until_signalled(server: grpc.Server, health_: Health, grace: float, on_stop: Callable[[], None]) -> None:
    """Run until SIGTERM/SIGINT, then report NOT_SERVING, stop accepting, and drain for ``grace`` seconds."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: draining in-flight requests for up to %.1fs", grace)
    health_.shutdown()
    on_stop()
    server.stop(grace).wait()
    REQUESTS.flush()
    log.info("stopped")


def configure_logging(service: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")


def release_statuses(states: Iterable[Any]) -> list[Any]:
    """ReleaseStatus messages from ReleaseManager.status() rows."""
    from funnel.v1 import common_pb2

    return [
        common_pb2.ReleaseStatus(release_id=s.release_id, state=s.state, error=s.error, channels=list(s.channels))
        for s in states
    ]


def status_response(service: str, states: Iterable[Any]) -> Any:
    from funnel.v1 import common_pb2

    return common_pb2.GetStatusResponse(service=service, releases=release_statuses(states))


def reload_response(states: Iterable[Any]) -> Any:
    from funnel.v1 import common_pb2

    return common_pb2.ReloadResponse(releases=release_statuses(states))


class ReleaseStatusRPCs:
    """GetStatus and Reload for a servicer with a ReleaseManager in ``releases`` and its name in ``service``."""

    service: str
    releases: Any

    @rpc
    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return status_response(self.service, self.releases.status())

    @rpc
    def Reload(self, request: Any, context: grpc.ServicerContext) -> Any:
        return reload_response(self.releases.reload())
