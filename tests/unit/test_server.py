"""The rpc wrapper: domain errors keep their status, unknown errors become a generic INTERNAL; all are tallied."""

from __future__ import annotations

import logging

import grpc
import pytest

from funnel.errors import NotFound
from funnel.serving.server import REQUESTS, rpc


class Aborted(Exception):
    pass


class FakeContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


class Request:
    release_id = "r1"


class Response:
    release_id = "r1"


class BatchRequest:
    release_id = "r1"

    def __init__(self, n: int) -> None:
        self.queries = list(range(n))


class Servicer:
    @rpc
    def Ok(self, request, context):
        return Response()

    @rpc
    def Batch(self, request, context):
        return Response()

    @rpc
    def Missing(self, request, context):
        raise NotFound("release 'r9' does not exist")

    @rpc
    def Broken(self, request, context):
        raise KeyError("secret internal detail")


def test_status_mapping_and_request_log(caplog: pytest.LogCaptureFixture) -> None:
    REQUESTS.flush()
    servicer, context = Servicer(), FakeContext()
    assert isinstance(servicer.Ok(Request(), context), Response)
    with pytest.raises(Aborted):
        servicer.Missing(Request(), context)
    assert context.code == grpc.StatusCode.NOT_FOUND and "r9" in context.details
    with caplog.at_level(logging.INFO), pytest.raises(Aborted):
        servicer.Broken(Request(), context)
    assert context.code == grpc.StatusCode.INTERNAL and "secret" not in context.details
    assert "secret internal detail" in caplog.text  # the traceback goes to the log, not the caller
    servicer.Batch(BatchRequest(3), context)
    servicer.Batch(BatchRequest(6), context)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        REQUESTS.flush()
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == [
        "served Batch release=r1 status=OK count=2 queries=9 (mean batch 4.5)",
        "served Broken release=r1 status=INTERNAL count=1",
        "served Missing release=r1 status=NOT_FOUND count=1",
        "served Ok release=r1 status=OK count=1",
    ]
