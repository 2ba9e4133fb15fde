"""The edges of every server, in process: undecodable bytes, the in-flight limit, health watches and drain, TLS,
and the gateway's admin API on an address of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from funnel.cli.stack import free_port
from funnel.client import AdminClient, ClientTls
from funnel.release.store import ArtifactStore
from funnel.serving.config import ConfigError
from funnel.serving.interceptors import DecodeGuard, ErrorInterceptor, InFlightLimit, RequestLog
from funnel.serving.server import build_server
from funnel.tls import TlsConfigError, server_credentials
from funnel.v1 import common_pb2
from gateway.server import GatewayServiceConfig, create_server
from tests.helpers import Certificates, make_certificates, publish_release

SERVICE = "test.Api"
UNDECODABLE = b"\xff\xff\xff"  # field 31 with wire type 7: no protobuf message parses it


class Api:
    """``Ok`` answers at once; ``Hold`` waits until the test releases it (the calls it holds are in flight)."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def ok(self, request: common_pb2.GetStatusRequest, context: grpc.ServicerContext) -> common_pb2.GetStatusResponse:
        return common_pb2.GetStatusResponse(service="ok")

    def hold(self, request: common_pb2.GetStatusRequest, context: grpc.ServicerContext) -> common_pb2.GetStatusResponse:
        self.entered.release()
        assert self.release.wait(30)
        return common_pb2.GetStatusResponse(service="held")

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=common_pb2.GetStatusRequest.FromString,
                response_serializer=common_pb2.GetStatusResponse.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(SERVICE, {"Ok": unary(self.ok), "Hold": unary(self.hold)})


def serve(api: Api, limit: int = 2, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    server, port, health = build_server(
        "127.0.0.1:0",
        lambda s: s.add_generic_rpc_handlers((api.handlers(),)),
        [SERVICE],
        max_workers=limit + 4,
        interceptors=[ErrorInterceptor(), RequestLog(3600), DecodeGuard(), InFlightLimit(limit)],
        credentials=credentials,
    )
    health.set_serving(True)
    server.start()
    return server, port


@pytest.fixture()
def api() -> Iterator[tuple[Api, grpc.Channel]]:
    api = Api()
    server, port = serve(api)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield api, channel
    api.release.set()
    server.stop(None)


def call(channel: grpc.Channel, method: str, timeout: float = 10) -> common_pb2.GetStatusResponse:
    stub = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=common_pb2.GetStatusRequest.SerializeToString,
        response_deserializer=common_pb2.GetStatusResponse.FromString,
    )
    response: common_pb2.GetStatusResponse = stub(common_pb2.GetStatusRequest(), timeout=timeout)
    return response


def raw(channel: grpc.Channel, path: str, streaming: str = "") -> grpc.RpcError:
    """Send UNDECODABLE to ``path`` as-is; the error the server ends the call with."""
    identity = {"request_serializer": None, "response_deserializer": None}
    with pytest.raises(grpc.RpcError) as refused:
        if streaming == "unary_stream":
            list(channel.unary_stream(path, **identity)(UNDECODABLE, timeout=10))
        elif streaming == "stream_stream":
            list(channel.stream_stream(path, **identity)(iter([UNDECODABLE]), timeout=10))
        else:
            channel.unary_unary(path, **identity)(UNDECODABLE, timeout=10)
    return refused.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("path", "streaming"),
    [
        (f"/{SERVICE}/Ok", ""),
        ("/grpc.health.v1.Health/Check", ""),
        ("/grpc.health.v1.Health/Watch", "unary_stream"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream_stream"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "stream_stream"),
    ],
)
def test_undecodable_bytes_are_invalid_argument_with_one_warning_and_no_traceback(
    api: tuple[Api, grpc.Channel], caplog: pytest.LogCaptureFixture, path: str, streaming: str
) -> None:
    _, channel = api
    with caplog.at_level(logging.INFO):
        error = raw(channel, path, streaming)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "do not parse as the method's request message" in (error.details() or "")
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1 and logged[0].exc_info is None and path in logged[0].getMessage()
    assert call(channel, "Ok").service == "ok"  # the server is unharmed


def test_beyond_the_in_flight_limit_calls_are_refused_at_once_and_health_still_answers(
    api: tuple[Api, grpc.Channel],
) -> None:
    server, channel = api
    pool = futures.ThreadPoolExecutor(2)
    held = [pool.submit(call, channel, "Hold", 30) for _ in range(2)]
    for _ in held:
        assert server.entered.acquire(timeout=30)  # both slots taken
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as refused:
            call(channel, "Ok")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 requests in flight" in (refused.value.details() or "")
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING  # probes are never shed
    server.release.set()
    assert [f.result(30).service for f in held] == ["held", "held"]  # the accepted ones all finish
    assert call(channel, "Ok").service == "ok"  # slots are given back
    pool.shutdown()


def gateway_config(root: Path, **overrides: Any) -> GatewayServiceConfig:
    store = ArtifactStore(root)
    publish_release(store, "r1")
    store.set_stable("r1")
    unreachable = f"127.0.0.1:{free_port()}"
    fields = {"retrieval_target": unreachable, "ranking_target": unreachable, "admin_address": "127.0.0.1:0"}
    return GatewayServiceConfig(artifact_root=str(root), address="127.0.0.1:0", **{**fields, **overrides})


def test_a_drain_ends_open_health_watches_instead_of_waiting_out_the_grace(tmp_path: Path) -> None:
    service = create_server(gateway_config(tmp_path))
    service.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="liveness"))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    started = time.monotonic()
    service.stop(grace=60.0)
    took = time.monotonic() - started
    assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]  # told, then the stream ended
    assert watch.code() == grpc.StatusCode.OK
    assert took < 30, f"stop waited {took:.1f}s: the open watch held the server until the grace ran out"
    channel.close()


def test_the_admin_api_is_on_its_own_address_behind_the_token(tmp_path: Path) -> None:
    service = create_server(gateway_config(tmp_path, admin_token="s3cret"))
    service.start()
    try:
        public, admin = (f"127.0.0.1:{service.endpoints[name].port}" for name in ("api", "admin"))
        with AdminClient(public, "s3cret", timeout=10) as on_public, pytest.raises(grpc.RpcError) as absent:
            on_public.status()
        assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not served on the public port at all
        for token in (None, "wrong"):
            with AdminClient(admin, token, timeout=10) as client, pytest.raises(grpc.RpcError) as refused:
                client.status()  # read-only, and still guarded: it names internal addresses
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with AdminClient(admin, "s3cret", timeout=10) as client:
            assert client.status().rollout.stable_release_id == "r1"
        with grpc.insecure_channel(admin) as channel:
            assert raw(channel, "/funnel.v1.AdminService/Promote").code() == grpc.StatusCode.UNAUTHENTICATED
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="funnel.v1.AdminService"), timeout=10
            )  # its own name answers on the admin server too
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING  # the stages never answered
    finally:
        service.stop()


def test_an_admin_address_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FUNNEL_ADMIN_TOKEN"):
        gateway_config(tmp_path, admin_address="0.0.0.0:50054")
    assert gateway_config(tmp_path / "2", admin_address="0.0.0.0:0", admin_token="t").admin_token == "t"
    assert gateway_config(tmp_path / "3", admin_address="[::1]:0").admin_token == ""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_tls_and_mutual_tls(certs: Certificates) -> None:
    api = Api()
    credentials = server_credentials(str(certs.server_cert), str(certs.server_key), str(certs.ca))
    server, port = serve(api, credentials=credentials)
    target = f"localhost:{port}"
    mutual = ClientTls(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    try:
        with mutual.connect(target) as channel:
            assert call(channel, "Ok").service == "ok"
        for refused_client in (ClientTls(), ClientTls(str(certs.ca)), ClientTls(str(certs.other_ca))):
            with refused_client.connect(target) as channel, pytest.raises(grpc.RpcError) as refused:
                call(channel, "Ok", timeout=5)  # plaintext, no client certificate, or an untrusted server
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_tls_settings_that_cannot_work_fail_at_start_up_naming_the_setting(tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(TlsConfigError, match="FUNNEL_TLS_KEY is not set"):
        server_credentials(str(certs.server_cert), "")
    with pytest.raises(TlsConfigError, match="FUNNEL_TLS_CLIENT_CA needs"):
        server_credentials("", "", str(certs.ca))
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(TlsConfigError, match="FUNNEL_TLS_CERT: expected a PEM file"):
        server_credentials(str(tmp_path / "not.pem"), str(certs.server_key))
    with pytest.raises(TlsConfigError, match="FUNNEL_TLS_KEY: cannot read"):
        server_credentials(str(certs.server_cert), str(tmp_path / "missing.key"))
