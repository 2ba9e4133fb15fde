"""Server interceptors for what every RPC shares: errors to status codes, the request tally, admin authentication."""

from __future__ import annotations

import collections
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from funnel.errors import FunnelError, Unauthenticated
from funnel.serving.workers import Periodic

log = logging.getLogger(__name__)
Behavior = Callable[[Any, grpc.ServicerContext], Any]
if TYPE_CHECKING:  # the stubs make these generic; at run time they are plain classes
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], "Handler | None"]
ADMIN_TOKEN_HEADER = "authorization"


def _wrap_unary(
    continuation: Continuation,
    details: grpc.HandlerCallDetails,
    wrap: Callable[[Behavior, str], Behavior],
) -> Handler | None:
    """The next handler with its unary-unary behaviour wrapped; streaming handlers (health Watch, reflection)
    pass through untouched."""
    handler = continuation(details)
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary, details.method),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception leaves the server with: a FunnelError's own code, INTERNAL for anything else."""
    return exc.code if isinstance(exc, FunnelError) else grpc.StatusCode.INTERNAL


class UnaryInterceptor(ServerInterceptor):
    """An interceptor that wraps the behaviour of every unary-unary method (``wrap``); streams pass through."""

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        raise NotImplementedError

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        return _wrap_unary(continuation, handler_call_details, self.wrap)


class ErrorInterceptor(UnaryInterceptor):
    """Ends an RPC that raised with its status: a FunnelError's code and message, anything else INTERNAL with a
    generic message (the traceback goes to the log, never to the caller)."""

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        def mapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except FunnelError as exc:
                context.abort(exc.code, str(exc))
            except Exception:
                log.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

        return mapped


class RequestLog(UnaryInterceptor):
    """Counts requests by (method, release, status) and, from ``start()`` to ``stop()``, logs the tally every
    ``interval`` seconds: what this process served, and for batch calls how many queries they carried."""

    def __init__(self, interval: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._queries: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._flusher = Periodic("request-log", interval, self.flush)

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

    def start(self) -> None:
        self._flusher.start()

    def stop(self) -> None:
        self._flusher.stop()
        self.flush()

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        name = method.rsplit("/", 1)[-1]

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            release_id = getattr(request, "release_id", "")
            try:
                response = behavior(request, context)
            except BaseException as exc:
                self.record(name, release_id, status_of(exc))
                raise
            queries = len(getattr(request, "queries", ()))
            self.record(name, getattr(response, "release_id", "") or release_id, grpc.StatusCode.OK, queries)
            return response

        return counted


class TokenAuth(ServerInterceptor):
    """With a token set, calls to the ``protected`` services must carry ``authorization: Bearer <token>``; every
    other service (the public API, health, reflection) is open. No token: nothing is checked."""

    def __init__(self, token: str, protected: Iterable[str]) -> None:
        self._expected = f"Bearer {token}".encode() if token else b""
        self._prefixes = tuple(f"/{service}/" for service in protected)

    def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        if not self._expected or not handler_call_details.method.startswith(self._prefixes):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get(ADMIN_TOKEN_HEADER, "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return continuation(handler_call_details)

        def wrap(behavior: Behavior, method: str) -> Behavior:
            def refuse(request: Any, context: grpc.ServicerContext) -> Any:
                expected = f"'{ADMIN_TOKEN_HEADER}: Bearer <FUNNEL_ADMIN_TOKEN>'"
                raise Unauthenticated(f"{method} needs the metadata {expected}; got none or another token")

            return refuse

        return _wrap_unary(continuation, handler_call_details, wrap)
