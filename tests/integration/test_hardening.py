"""The stack's edges with real processes: TLS on every hop, a SIGTERM drain under load, bad bytes on the wire."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from funnel.cli import stack
from funnel.client import ClientTls, recommend
from tests.helpers import Load, make_certificates, wait_for

USERS = [str(u) for u in range(1, 201)]


def test_the_stack_serves_over_tls_with_mutual_tls_between_every_hop(artifact_root: Path, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    server = {
        "FUNNEL_TLS_CERT": certs.server_cert,
        "FUNNEL_TLS_KEY": certs.server_key,
        "FUNNEL_TLS_CLIENT_CA": certs.ca,
    }
    client = {"FUNNEL_STAGE_TLS_CA": certs.ca, "FUNNEL_STAGE_TLS_CERT": certs.client_cert}
    env = {name: str(path) for name, path in {**server, **client, "FUNNEL_STAGE_TLS_KEY": certs.client_key}.items()}
    tls = ClientTls(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    services = stack.start_stack(artifact_root, tmp_path / "logs", extra_env=env, tls=tls)
    try:
        gateway = services["gateway"].address
        answer = recommend(gateway, "1", 10, tls=tls)
        assert len(answer.items) == 10 and not answer.degraded, answer.degraded_reasons  # both stages over mTLS
        for refused in (ClientTls(), ClientTls(str(certs.ca)), ClientTls(str(certs.other_ca))):
            with pytest.raises(grpc.RpcError) as error:
                recommend(gateway, "1", 10, timeout=5, tls=refused)  # plaintext, no certificate, untrusted server
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError):  # the stages refuse a caller without the certificate just the same
                recommend(services["ranking"].address, "1", 10, timeout=5, tls=refused)
    finally:
        codes = stack.stop_stack(services)
    assert codes == {"gateway": 0, "ranking": 0, "retrieval": 0}


def test_sigterm_drains_the_gateway_under_load_losing_no_call_sent_before_it(
    artifact_root: Path, tmp_path: Path
) -> None:
    lame_duck, grace = 1.0, 30.0
    env = {"FUNNEL_LAME_DUCK": str(lame_duck), "FUNNEL_SHUTDOWN_GRACE": str(grace)}
    services = stack.start_stack(artifact_root, tmp_path / "logs", extra_env=env)
    gateway = services["gateway"]
    try:
        with grpc.insecure_channel(gateway.address) as watching, Load(gateway.address, USERS, clients=4) as load:
            watch = health_pb2_grpc.HealthStub(watching).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            wait_for(lambda: len(load.samples) >= 100, 120, "answers before the signal")
            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # told at once
            gateway.process.wait(120)
            exited = time.monotonic() - signalled
            assert list(watch) == []  # the watch ended cleanly: it never held the drain
    finally:
        stack.stop_stack(services)
    before = [s for s in load.samples if s.started < signalled]
    lost = [s for s in before if s.code != "OK"]
    print(f"{len(before)} calls sent before SIGTERM, {len(lost)} lost; the gateway exited after {exited:.2f}s")
    assert lost == []
    assert gateway.process.returncode == 0
    assert exited < lame_duck + grace / 2, f"exit took {exited:.1f}s: something held the drain toward the grace"


def test_at_four_times_its_in_flight_limit_the_gateway_sheds_the_excess_and_fails_nothing_else(
    artifact_root: Path, tmp_path: Path
) -> None:
    limit = 4
    env = {"FUNNEL_MAX_REQUESTS": str(limit), "FUNNEL_MAX_WORKERS": str(4 * limit)}
    services = stack.start_stack(artifact_root, tmp_path / "logs", extra_env=env)
    try:
        with Load(services["gateway"].address, USERS, clients=4 * limit) as load:
            wait_for(lambda: sum(s.code == "OK" for s in load.samples) >= 200, 180, "200 answers")
    finally:
        stack.stop_stack(services)
    codes = Counter(s.code for s in load.samples)
    ok = sorted(s.latency_ms for s in load.samples if s.code == "OK")
    shed = sorted(s.latency_ms for s in load.samples if s.code == "RESOURCE_EXHAUSTED")
    print(f"{codes}; accepted p99 {ok[int(len(ok) * 0.99)]:.1f} ms, refused p99 {shed[int(len(shed) * 0.99)]:.1f} ms")
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes  # the excess is shed; nothing else fails
    assert not any(s.degraded for s in load.samples if s.code == "OK")  # and what is accepted is served in full
