"""The server interceptors on a real in-process server: errors to status codes, the request tally, admin auth."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from funnel.errors import NotFound
from funnel.serving.interceptors import ErrorInterceptor, RequestLog, TokenAuth
from funnel.serving.server import build_server
from funnel.v1 import common_pb2

PUBLIC, ADMIN = "test.Public", "test.Admin"


def _status(request: common_pb2.GetStatusRequest, context: grpc.ServicerContext) -> common_pb2.GetStatusResponse:
    return common_pb2.GetStatusResponse(service="ok")


def _missing(request: Any, context: grpc.ServicerContext) -> Any:
    raise NotFound("release 'r9' does not exist")


def _broken(request: Any, context: grpc.ServicerContext) -> Any:
    raise KeyError("secret internal detail")


def _reload(request: common_pb2.ReloadRequest, context: grpc.ServicerContext) -> common_pb2.ReloadResponse:
    return common_pb2.ReloadResponse()


def _handlers(service: str) -> grpc.GenericRpcHandler:
    def unary(fn: Any, request_type: Any, response_type: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    status = (common_pb2.GetStatusRequest, common_pb2.GetStatusResponse)
    return grpc.method_handlers_generic_handler(
        service,
        {
            "Ok": unary(_status, *status),
            "Missing": unary(_missing, *status),
            "Broken": unary(_broken, *status),
            "Reload": unary(_reload, common_pb2.ReloadRequest, common_pb2.ReloadResponse),
        },
    )


@pytest.fixture()
def served(request: pytest.FixtureRequest) -> Iterator[tuple[grpc.Channel, RequestLog]]:
    token = getattr(request, "param", "s3cret")
    tally = RequestLog(interval=3600)
    server, port, _ = build_server(
        "127.0.0.1:0",
        lambda s: s.add_generic_rpc_handlers((_handlers(PUBLIC), _handlers(ADMIN))),
        [PUBLIC, ADMIN],
        max_workers=2,
        interceptors=[ErrorInterceptor(), tally, TokenAuth(token, [ADMIN])],
    )
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, tally
    server.stop(None)


def call(channel: grpc.Channel, service: str, method: str, token: str | None = None) -> common_pb2.GetStatusResponse:
    stub = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=common_pb2.GetStatusRequest.SerializeToString,
        response_deserializer=common_pb2.GetStatusResponse.FromString,
    )
    metadata = [("authorization", f"Bearer {token}")] if token else None
    response: common_pb2.GetStatusResponse = stub(common_pb2.GetStatusRequest(), timeout=5, metadata=metadata)
    return response


def test_domain_errors_keep_their_status_and_others_become_a_generic_internal(
    served: tuple[grpc.Channel, RequestLog], caplog: pytest.LogCaptureFixture
) -> None:
    channel, _ = served
    assert call(channel, PUBLIC, "Ok").service == "ok"
    with pytest.raises(grpc.RpcError) as missing:
        call(channel, PUBLIC, "Missing")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "r9" in missing.value.details()
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as broken:
        call(channel, PUBLIC, "Broken")
    assert broken.value.code() == grpc.StatusCode.INTERNAL and "secret" not in broken.value.details()
    assert "secret internal detail" in caplog.text  # the traceback goes to the log, not the caller


def test_the_tally_counts_each_call_by_method_and_status(
    served: tuple[grpc.Channel, RequestLog], caplog: pytest.LogCaptureFixture
) -> None:
    channel, tally = served
    call(channel, PUBLIC, "Ok")
    call(channel, PUBLIC, "Ok")
    for method in ("Missing", "Broken"):
        with pytest.raises(grpc.RpcError):
            call(channel, PUBLIC, method)
    with pytest.raises(grpc.RpcError):
        call(channel, ADMIN, "Ok")  # refused: no token
    tally.record("Batch", "r1", grpc.StatusCode.OK, queries=3)
    tally.record("Batch", "r1", grpc.StatusCode.OK, queries=6)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tally.flush()
    assert sorted(r.getMessage() for r in caplog.records) == [
        "served Batch release=r1 status=OK count=2 queries=9 (mean batch 4.5)",
        "served Broken release=- status=INTERNAL count=1",
        "served Missing release=- status=NOT_FOUND count=1",
        "served Ok release=- status=OK count=2",
        "served Ok release=- status=UNAUTHENTICATED count=1",
    ]


def test_admin_calls_need_the_token_and_the_public_api_does_not(served: tuple[grpc.Channel, RequestLog]) -> None:
    channel, _ = served
    for _ in range(2):  # alternating: the interceptors outside the check keep a handler per method
        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as refused:
                call(channel, ADMIN, "Ok", token)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in refused.value.details()
            assert call(channel, ADMIN, "Ok", "s3cret").service == "ok"
    assert call(channel, PUBLIC, "Ok").service == "ok"


@pytest.mark.parametrize("served", [""], indirect=True)
def test_without_a_token_nothing_is_checked(served: tuple[grpc.Channel, RequestLog]) -> None:
    channel, _ = served
    assert call(channel, ADMIN, "Ok").service == "ok"
