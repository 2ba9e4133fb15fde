"""An OTLP/gRPC trace receiver that counts spans and keeps none: what traced stacks export to in benchmarks."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

PLACEHOLDER = "OTLP_SINK"  # a variant's setting with this value gets the sink's endpoint instead


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.endpoint = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        n = sum(len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(None)
