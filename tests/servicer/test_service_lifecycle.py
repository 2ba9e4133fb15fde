"""A Service is built without starting anything, starts its server and every worker, and stops them all."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from funnel.cli.stack import free_port
from funnel.release.store import ArtifactStore
from funnel.serving import service as service_module
from funnel.v1 import common_pb2
from gateway.server import GatewayServiceConfig, create_server
from tests.helpers import publish_release

WORKER_THREADS = {"gateway-poll", "gateway-load", "stage-readiness", "request-log"}


def running_workers() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive()} & WORKER_THREADS


def health(port: int, service: str = "") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def test_create_builds_start_starts_and_stop_stops_every_thread(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish_release(store, "r1")
    store.set_stable("r1")
    unreachable = f"127.0.0.1:{free_port()}"
    config = GatewayServiceConfig(
        artifact_root=str(tmp_path), retrieval_target=unreachable, ranking_target=unreachable, poll_interval=0.05
    )
    assert running_workers() == set()
    service = create_server(config)
    assert running_workers() == set()  # built, nothing started
    service.start()
    try:
        assert running_workers() == WORKER_THREADS
        assert health(service.port) == "NOT_SERVING"  # the stages have never answered
        assert health(service.port, "liveness") == "SERVING"  # but the process is alive: no restart
    finally:
        service.stop(grace=1.0, lame_duck=0.2)
    assert running_workers() == set()


def test_stop_keeps_answering_through_the_lame_duck_pause_then_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path)
    publish_release(store, "r1")
    store.set_stable("r1")
    unreachable = f"127.0.0.1:{free_port()}"
    config = GatewayServiceConfig(artifact_root=str(tmp_path), retrieval_target=unreachable, ranking_target=unreachable)
    service = create_server(config)
    service.start()
    service.releases.sync()
    pausing, resume, paused_for = threading.Event(), threading.Event(), []

    class Pause:
        """funnel.serving.service's ``time``: the lame-duck pause lasts until the test ends it, however slow the
        machine (no call has to fit in a real pause)."""

        @staticmethod
        def sleep(seconds: float) -> None:
            paused_for.append(seconds)
            pausing.set()
            assert resume.wait(30), "the test never ended the pause"

    monkeypatch.setattr(service_module, "time", Pause)
    stopper = threading.Thread(target=service.stop, kwargs={"grace": 1.0, "lame_duck": 6.0}, daemon=True)
    stopper.start()
    try:
        assert pausing.wait(30) and paused_for == [6.0]
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            status = channel.unary_unary(
                "/funnel.v1.GatewayService/GetStatus",
                request_serializer=common_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=common_pb2.GetStatusResponse.FromString,
            )(common_pb2.GetStatusRequest(), timeout=10)
        assert status.service == "gateway" and stopper.is_alive()  # answered during the pause
        assert health(service.port) == health(service.port, "liveness") == "NOT_SERVING"
    finally:
        resume.set()
        stopper.join(30)
    assert not stopper.is_alive()
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
