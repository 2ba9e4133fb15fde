"""Server interceptors for what every RPC shares: errors to status codes, undecodable requests, the request tally,
load shedding, admin authentication."""

from __future__ import annotations

import collections
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from funnel.errors import FunnelError, InvalidArgument, ResourceExhausted, Unauthenticated
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


def _rewrapped(handler: Handler, behavior: Behavior) -> Handler:
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception leaves the server with: a FunnelError's own code, INTERNAL for anything else."""
    return exc.code if isinstance(exc, FunnelError) else grpc.StatusCode.INTERNAL


class PerMethodInterceptor(ServerInterceptor):
    """An interceptor that hands on a handler of its own in place of each method's (``handler_for``).

    gRPC asks the interceptors for a handler on every call; the one made is kept per method and reused while the
    next layer hands on the same handler (a layer that answers per call, like TokenAuth's refusal, gets its handler
    made afresh), so a call pays a lookup per layer rather than new closures.
    """

    def __init__(self) -> None:
        self._made: dict[str, tuple[Handler, Handler]] = {}

    def handler_for(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        made = self._made.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        mine = self.handler_for(handler, method)
        self._made[method] = (handler, mine)
        return mine


class UnaryInterceptor(PerMethodInterceptor):
    """An interceptor that wraps the behaviour of every unary-unary method (``wrap``); streams pass through."""

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        raise NotImplementedError

    def handler_for(self, handler: Handler, method: str) -> Handler:
        if handler.unary_unary is None:
            return handler
        return _rewrapped(handler, self.wrap(handler.unary_unary, method))


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


class Undecodable:
    """What a request deserializer hands on in place of a message its bytes do not parse as."""

    def __init__(self, method: str, size: int, error: Exception) -> None:
        self.message = f"{method}: the request bytes ({size}) do not parse as the method's request message ({error})"


class DecodeGuard(PerMethodInterceptor):
    """Request bytes that do not parse as the method's message end the call INVALID_ARGUMENT, with one WARNING line
    and no traceback (gRPC itself answers INTERNAL "Exception deserializing request!" and logs a traceback)."""

    def handler_for(self, handler: Handler, method: str) -> Handler:
        if handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:
                return Undecodable(method, len(data), exc)

        def refuse(undecodable: Undecodable, context: grpc.ServicerContext, streaming: bool) -> Any:
            log.warning("refused undecodable request: %s", undecodable.message)
            if streaming:  # no ErrorInterceptor around streams: end the call here
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, undecodable.message)
            raise InvalidArgument(undecodable.message)

        def checked(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    return refuse(request, context, streaming)
                return behavior(request, context)

            return call

        def checked_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(requests: Any, context: grpc.ServicerContext) -> Any:
                def each() -> Any:
                    for request in requests:
                        if isinstance(request, Undecodable):
                            refuse(request, context, True)
                        yield request

                return behavior(each(), context)

            return call

        kinds: dict[str, tuple[Callable[..., Handler], Callable[[Callable[..., Any]], Callable[..., Any]]]] = {
            "unary_unary": (grpc.unary_unary_rpc_method_handler, lambda b: checked(b, False)),
            "unary_stream": (grpc.unary_stream_rpc_method_handler, lambda b: checked(b, True)),
            "stream_unary": (grpc.stream_unary_rpc_method_handler, checked_stream),
            "stream_stream": (grpc.stream_stream_rpc_method_handler, checked_stream),
        }
        for kind, (make, wrap) in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    wrap(behavior), request_deserializer=deserialize, response_serializer=handler.response_serializer
                )
        return handler


class InFlightLimit(UnaryInterceptor):
    """At most ``limit`` unary calls run at once (health checks aside: probes must answer under load); one more is
    refused RESOURCE_EXHAUSTED at once instead of waiting in a queue without bound."""

    EXEMPT = "/grpc.health.v1.Health/"

    def __init__(self, limit: int, setting: str = "FUNNEL_MAX_REQUESTS") -> None:
        if limit < 1:
            raise ValueError(f"expected an in-flight limit of at least 1, got {limit}")
        super().__init__()
        self.limit, self._setting = limit, setting
        self._slots = threading.BoundedSemaphore(limit)

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        if method.startswith(self.EXEMPT):
            return behavior

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._slots.acquire(blocking=False):
                raise ResourceExhausted(
                    f"at capacity: {self.limit} requests in flight ({self._setting}); retry with backoff"
                )
            try:
                return behavior(request, context)
            finally:
                self._slots.release()

        return limited


class RequestLog(UnaryInterceptor):
    """Counts requests by (method, release, status) and, from ``start()`` to ``stop()``, logs the tally every
    ``interval`` seconds: what this process served, and for batch calls how many queries they carried."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
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

        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            expected = f"'{ADMIN_TOKEN_HEADER}: Bearer <FUNNEL_ADMIN_TOKEN>'"
            raise Unauthenticated(f"{method} needs the metadata {expected}; got none or another token")

        return _rewrapped(handler, refuse)
