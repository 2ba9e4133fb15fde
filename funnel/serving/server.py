"""gRPC server bootstrap shared by every service: health, reflection, interceptors, and the status RPCs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from funnel.errors import NotFound
from funnel.serving.interceptors import ServerInterceptor
from funnel.serving.manager import LoadState, ReleaseManager, ReleaseStatus
from funnel.v1 import common_pb2

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
WIRE_STATES = {
    LoadState.LOADING: common_pb2.RELEASE_STATE_LOADING,
    LoadState.READY: common_pb2.RELEASE_STATE_READY,
    LoadState.FAILED: common_pb2.RELEASE_STATE_FAILED,
}


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS = "liveness"  # the health service name that answers SERVING while the process runs (liveness probes)


class Health:
    """The standard grpc.health.v1 service. The overall status ("") and each API service's follow readiness
    together; ``liveness`` stays SERVING until shutdown, for probes that must not restart a replica that is still
    loading its first release. ``shutdown()`` reports NOT_SERVING everywhere; ``close()`` then ends every Watch
    stream, so open watches never hold a draining server."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._names = ["", *service_names]
        self._changed = threading.Condition()
        self._status: dict[str, int] = {LIVENESS: health_pb2.HealthCheckResponse.SERVING}
        self._serving: bool | None = None
        self._closed = False
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        """Report ``serving`` for the overall status and each API service; watchers hear only of changes."""
        with self._changed:
            if serving == self._serving or self._status[LIVENESS] != health_pb2.HealthCheckResponse.SERVING:
                return  # unchanged, or shut down: NOT_SERVING for good
            self._serving = serving
            self._set(self._names, serving)

    def shutdown(self) -> None:
        """NOT_SERVING for every name, liveness included, from now on."""
        with self._changed:
            self._set([*self._names, LIVENESS], False)

    def close(self) -> None:
        """End every Watch stream (after its last status was sent); new watches end at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _set(self, names: Iterable[str], serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in names:
            self._status[name] = status
        self._changed.notify_all()

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._changed:
            status = self._status.get(request.service)
        if status is None:
            raise NotFound(f"health: unknown service {request.service!r}; expected one of {[*self._names, LIVENESS]}")
        return health_pb2.HealthCheckResponse(status=status)

    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._changed:
            statuses = dict(self._status)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client leaves or ``close()`` (one worker thread a stream)."""
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        context.add_callback(self._wake)
        sent: int | None = None
        while True:
            with self._changed:
                status = self._status.get(request.service, unknown)
                while not self._closed and context.is_active() and status == sent:
                    self._changed.wait()
                    status = self._status.get(request.service, unknown)
                closed = self._closed
            if not context.is_active():
                return
            if status != sent:
                sent = status
                yield health_pb2.HealthCheckResponse(status=status)
            if closed:
                return

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(service_names: list[str], server: grpc.Server) -> None:
    """Server reflection as grpc.reflection.v1 (what current tools ask for) and v1alpha (older ones). grpcio-reflection
    ships only v1alpha; v1 is the same protocol under another package name, so the one servicer answers both."""
    names = [*service_names, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def build_server(
    address: str,
    register: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    *,
    max_workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_connection_age: float = 0.0,
    connection_age_grace: float = 5.0,
    interceptors: Sequence[ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    health: Health | None = None,
) -> tuple[grpc.Server, int, Health]:
    """Create (not start) a server with the given servicers, health and reflection; returns the bound port.

    ``interceptors`` wrap every call, the first outermost. At most ``max_workers`` calls (streams included) are
    open at once; gRPC refuses one more with RESOURCE_EXHAUSTED rather than queueing it. A ``max_connection_age``
    (seconds, 0: none) makes clients reconnect that often, letting calls in flight finish within
    ``connection_age_grace``. With ``credentials`` the port speaks TLS only. ``health`` shares one health status
    between servers of one process (a new one otherwise).
    """
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(connection_age_grace * 1000)),
        ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        interceptors=list(interceptors),
        options=options,
        maximum_concurrent_rpcs=max_workers,
    )
    register(server)
    names = list(service_names)
    health = health or Health(names)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _enable_reflection([*names, HEALTH_SERVICE], server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"could not bind {address!r}: expected host:port that is free")
    return server, port, health


def release_statuses(states: Iterable[ReleaseStatus]) -> list[common_pb2.ReleaseStatus]:
    """ReleaseStatus messages from ReleaseManager.status() rows."""
    return [
        common_pb2.ReleaseStatus(
            release_id=s.release_id,
            state=WIRE_STATES[s.state],
            state_name=s.state.value,
            error=s.error,
            channels=list(s.channels),
        )
        for s in states
    ]


def ready_release_ids(response: common_pb2.GetStatusResponse) -> list[str]:
    """The releases a GetStatus answer reports ready (services built before the enum send only ``state_name``)."""
    return [
        r.release_id
        for r in response.releases
        if r.state == common_pb2.RELEASE_STATE_READY or (not r.state and r.state_name == LoadState.READY.value)
    ]


class ReleaseStatusRPCs:
    """GetStatus and Reload for a servicer with a ReleaseManager in ``releases`` and its name in ``service``."""

    service: str
    releases: ReleaseManager[Any]

    def GetStatus(
        self, request: common_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> common_pb2.GetStatusResponse:
        return common_pb2.GetStatusResponse(
            service=self.service, releases=release_statuses(self.releases.status()), serving=self.releases.ready()
        )

    def Reload(self, request: common_pb2.ReloadRequest, context: grpc.ServicerContext) -> common_pb2.ReloadResponse:
        return common_pb2.ReloadResponse(releases=release_statuses(self.releases.reload()))
