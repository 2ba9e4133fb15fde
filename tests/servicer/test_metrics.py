"""Prometheus metrics served by a real gateway over HTTP: calls by method and status, outcomes by release, stage
calls, releases and the candidate fraction; and nothing served when no address is set."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from funnel.client import AdminClient, recommend
from funnel.release.store import ArtifactStore
from funnel.serving.metrics import Metrics, MetricsEndpoint
from gateway.server import create_server
from tests.helpers import clone_release
from tests.servicer.test_hardening import gateway_config


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_gateway_serves_its_metrics(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, metrics_address="127.0.0.1:0", retrieval_timeout=0.2, ranking_timeout=0.2)
    clone_release(ArtifactStore(tmp_path), "r1", "r2")
    service = create_server(config)
    service.start()
    try:
        service.releases.sync()
        assert service.metrics_port
        gateway, admin = (f"127.0.0.1:{service.endpoints[name].port}" for name in ("api", "admin"))
        answer = recommend(gateway, "u1", 5)  # the stages are unreachable: popular items, degraded
        assert answer.degraded and answer.release_id == "r1"
        with pytest.raises(grpc.RpcError):
            recommend(gateway, "u1", 0)  # k out of range
        with AdminClient(admin) as client:
            client.start_rollout("r2", 0.25)
        service.releases.sync()
        found = scrape(service.metrics_port)
    finally:
        service.stop()
    assert found[("funnel_requests_total", (("outcome", "degraded_retrieval"), ("release", "r1")))] == 1
    assert found[("funnel_requests_total", (("outcome", "INVALID_ARGUMENT"), ("release", "")))] == 1
    recommend_calls = (
        "grpc_server_call_duration_seconds_count",
        (("grpc_method", "funnel.v1.GatewayService/Recommend"),),
    )
    assert found[(recommend_calls[0], (*recommend_calls[1], ("grpc_status", "INVALID_ARGUMENT")))] == 1
    assert found[(recommend_calls[0], (*recommend_calls[1], ("grpc_status", "OK")))] == 1
    stage_calls = [v for (name, labels), v in found.items() if name == "grpc_client_call_duration_seconds_count"]
    assert sum(stage_calls) >= 1  # the failed retrieval call, with its status
    assert (
        "grpc_client_call_duration_seconds_count",
        (
            ("grpc_method", "funnel.v1.RetrievalService/RetrieveBatch"),
            ("grpc_status", "UNAVAILABLE"),
            ("grpc_target", config.retrieval_target),
        ),
    ) in found
    assert found[("funnel_stage_batch_size_count", (("stage", "retrieval"),))] == 1
    assert found[("funnel_release_state", (("release", "r1"), ("state", "ready")))] == 1
    assert found[("funnel_release_state", (("release", "r1"), ("state", "failed")))] == 0
    assert found[("funnel_channel_release", (("channel", "stable"), ("release", "r1")))] == 1
    assert found[("funnel_candidate_fraction", ())] == 0.25
    assert found[("funnel_rollout_events_total", (("event", "start"),))] == 1
    assert ("funnel_release_load_duration_seconds", (("release", "r2"),)) in found


def test_no_metrics_address_serves_and_records_nothing(tmp_path: Path) -> None:
    service = create_server(gateway_config(tmp_path, retrieval_timeout=0.2, ranking_timeout=0.2))
    service.start()
    try:
        service.releases.sync()
        assert recommend(f"127.0.0.1:{service.port}", "u1", 5).degraded
    finally:
        service.stop()
    assert service.metrics_port is None and not service.metrics.enabled
    assert not any(isinstance(w, MetricsEndpoint) for w in service.workers)
    assert list(service.metrics.registry.collect()) == []


def test_unrecorded_families_take_any_labels_and_values() -> None:
    metrics = Metrics("x", enabled=False)
    metrics.requests.labels("r1", "ok").inc()
    metrics.stage_duration.labels("retrieval").observe(0.1)
    metrics.phase_observer()("ann_search_seconds", 0.01)
    assert list(metrics.registry.collect()) == []


def test_the_endpoint_stops_with_its_owner() -> None:
    endpoint = MetricsEndpoint(Metrics("x"), "127.0.0.1:0")
    endpoint.start()
    assert scrape(endpoint.port) is not None
    endpoint.stop()
    with pytest.raises(OSError):
        scrape(endpoint.port)
