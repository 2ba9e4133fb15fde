"""OpenTelemetry tracing: W3C trace context from the gateway through retrieval and ranking, one trace a request;
spans go out over OTLP when the standard OTEL_* environment variables ask for it, and nowhere otherwise."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from funnel.serving.interceptors import Behavior, UnaryInterceptor, status_of

# Resolved once: a proxy that follows the provider Tracing.start() installs (a no-op one until then).
tracer = trace.get_tracer("funnel")
# The request spans a batched stage call carries (set by the gateway's Coalescer around the call it makes).
batch_members: contextvars.ContextVar[Sequence[SpanContext]] = contextvars.ContextVar("batch_members", default=())


def tracing_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the OTEL_* variables ask for OTLP export: OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint set
    (and OTEL_TRACES_EXPORTER not 'none'); OTEL_SDK_DISABLED=true turns it off."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return exporter == "otlp" or bool(endpoint)


class Tracing:
    """The process's tracer provider, exporting over OTLP (configured by the OTEL_* variables) from ``start()``;
    ``stop()`` sends what is buffered and shuts the exporter down."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._provider: Any = None

    def start(self) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": self.service}
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(self._provider)

    def stop(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


class TracingInterceptor(UnaryInterceptor):
    """A SERVER span per unary call, the child of the caller's span when its metadata carries a W3C
    ``traceparent``."""

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        fields = propagate.get_global_textmap().fields  # the metadata keys the propagators read

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            carrier = {k: v for k, v in (context.invocation_metadata() or ()) if k in fields and isinstance(v, str)}
            parent = propagate.extract(carrier) if carrier else None  # none: a new trace
            with tracer.start_as_current_span(
                method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                try:
                    return behavior(request, context)
                except BaseException as exc:
                    code = status_of(exc)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    span.set_status(Status(StatusCode.ERROR, code.name))
                    raise

        return traced


@contextmanager
def client_span(method: str, target: str) -> Iterator[list[tuple[str, str]]]:
    """A CLIENT span for a call to ``method`` at ``target``, linked to every request span of the batch it carries;
    yields the metadata that carries its context to the server."""
    current = trace.get_current_span().get_span_context()
    links = [Link(member) for member in batch_members.get() if member.is_valid and member != current]
    service, _, name = method.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "server.address": target}
    with tracer.start_as_current_span(method, kind=SpanKind.CLIENT, links=links, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield list(carrier.items())


def current_span_context() -> SpanContext:
    return trace.get_current_span().get_span_context()
