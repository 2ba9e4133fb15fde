"""One request is one trace across the three processes: each exports its spans over OTLP (configured only by the
standard OTEL_* variables) to a collector the test runs, and the spans share the caller's trace id with the right
parents."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from funnel.cli import stack
from funnel.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.helpers import wait_for


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span with the service.name of the process that sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, Any]] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans += [(attributes.get("service.name", ""), span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> dict[tuple[str, str], Any]:
        """(service, span name) → span, for the spans of one trace."""
        with self.lock:
            return {(service, span.name): span for service, span in self.spans if span.trace_id == trace_id}


@pytest.fixture()
def collector() -> Iterator[tuple[Collector, str]]:
    received = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield received, f"http://127.0.0.1:{port}"
    server.stop(None)


def test_one_request_is_one_trace_through_gateway_retrieval_and_ranking(
    artifact_root: Path, tmp_path: Path, collector: tuple[Collector, str]
) -> None:
    received, endpoint = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    services = stack.start_stack(artifact_root, tmp_path / "logs", extra_env=env)
    trace_id, caller = secrets.token_bytes(16), secrets.token_bytes(8)
    try:
        with grpc.insecure_channel(services["gateway"].address) as channel:
            answer = gateway_pb2_grpc.GatewayServiceStub(channel).Recommend(
                gateway_pb2.RecommendRequest(user=common_pb2.UserContext(user_id="1"), k=10),
                timeout=30,
                metadata=[("traceparent", f"00-{trace_id.hex()}-{caller.hex()}-01")],
            )
        assert not answer.degraded and answer.ranking_release_id
        expected = {
            ("gateway", "funnel.v1.GatewayService/Recommend"),
            ("gateway", "funnel.v1.RetrievalService/RetrieveBatch"),
            ("gateway", "funnel.v1.RankingService/RankBatch"),
            ("retrieval", "funnel.v1.RetrievalService/RetrieveBatch"),
            ("ranking", "funnel.v1.RankingService/RankBatch"),
        }
        wait_for(lambda: expected <= set(received.of_trace(trace_id)), 60, "the request's spans from all three")
    finally:
        stack.stop_stack(services)
    spans = received.of_trace(trace_id)
    recommend = spans[("gateway", "funnel.v1.GatewayService/Recommend")]
    assert recommend.parent_span_id == caller  # the caller's span is the parent: its trace continues
    for stage, method in (("retrieval", "RetrievalService/RetrieveBatch"), ("ranking", "RankingService/RankBatch")):
        client = spans[("gateway", f"funnel.v1.{method}")]
        server = spans[(stage, f"funnel.v1.{method}")]
        assert client.parent_span_id == recommend.span_id  # the gateway's call, within the request
        assert server.parent_span_id == client.span_id  # the stage's work, within the gateway's call
        assert client.kind == client.SPAN_KIND_CLIENT and server.kind == server.SPAN_KIND_SERVER
