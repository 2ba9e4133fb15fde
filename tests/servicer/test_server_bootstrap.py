"""The server every service builds answers server reflection in both protocol versions tools use."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from funnel.serving.server import build_server


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
def test_reflection_lists_the_services_in_v1_and_v1alpha(package: str) -> None:
    server, port, _ = build_server("127.0.0.1:0", lambda s: None, ["test.Service"], max_workers=2)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = channel.stream_stream(
                f"/{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            answer = next(info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    finally:
        server.stop(None)
    assert {s.name for s in answer.list_services_response.service} >= {"test.Service", "grpc.health.v1.Health"}
