"""Prometheus metrics of one service: gRPC calls by method and status (the names gRPC's OpenTelemetry plugin
exports), Funnel's own request, stage, batch, model and release metrics, and the HTTP endpoint that serves them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from funnel.release.observe import ignore
from funnel.serving.interceptors import Behavior, UnaryInterceptor, status_of
from funnel.serving.manager import LoadState, ReleaseManager

log = logging.getLogger(__name__)

# Seconds: 0.5 ms to 10 s (gRPC's OpenTelemetry plugin uses the same spread for call durations).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Unrecorded:
    """A metric family's stand-in while metrics are off: takes every label and value, records nothing."""

    def labels(self, *values: str) -> Unrecorded:
        return self

    def observe(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1.0) -> None:
        pass


UNRECORDED = Unrecorded()


class Metrics:
    """Every metric family a service records, in a registry of its own (several services share a test process).

    Families a service never touches stay empty: the stages record no Recommend outcomes, the gateway no model
    time.
    """

    def __init__(self, service: str, enabled: bool = True) -> None:
        """``enabled=False`` (no metrics address): every family records nothing, and calls pay nothing for it."""
        self.service, self.enabled = service, enabled
        self.registry = CollectorRegistry()
        self.server_call_duration = self._histogram(
            "grpc_server_call_duration_seconds",
            "Time from the start of a unary call to its end on the server, by method and status",
            ["grpc_method", "grpc_status"],
        )
        self.client_call_duration = self._histogram(
            "grpc_client_call_duration_seconds",
            "Time of a call the gateway made to a stage (retries included), by method, target and status",
            ["grpc_method", "grpc_target", "grpc_status"],
        )
        self.requests = self._counter(
            "funnel_requests",
            "Recommend answers by the release that served them and their outcome: ok, degraded_retrieval, "
            "degraded_ranking, cold_start, or the status code of a refusal",
            ["release", "outcome"],
        )
        self.request_duration = self._histogram(
            "funnel_request_duration_seconds",
            "Time the gateway took to answer a Recommend, by the release that served it",
            ["release"],
        )
        self.stage_duration = self._histogram(
            "funnel_stage_duration_seconds",
            "Time the gateway spent in each stage of a Recommend (batching wait included)",
            ["stage"],
        )
        self.batch_size = self._histogram(
            "funnel_stage_batch_size",
            "Requests carried by each batched stage call the gateway sent",
            ["stage"],
            BATCH_BUCKETS,
        )
        self.phase_duration = self._histogram(
            "funnel_model_phase_duration_seconds",
            "Time of each phase of a stage call: query_tower, ann_search, ranker",
            ["phase"],
        )
        self.excluded_seen = self._counter(
            "funnel_items_excluded_seen", "Candidates dropped because the user had already seen them", []
        )
        self.rollout_events = self._counter(
            "funnel_rollout_events",
            "Rollout changes made through the admin API: start, fraction, promote, rollback",
            ["event"],
        )

    def _histogram(
        self, name: str, documentation: str, labels: list[str], buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram | Unrecorded:
        if not self.enabled:
            return UNRECORDED
        return Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)

    def _counter(self, name: str, documentation: str, labels: list[str]) -> Counter | Unrecorded:
        return Counter(name, documentation, labels, registry=self.registry) if self.enabled else UNRECORDED

    def watch_releases(self, releases: ReleaseManager[Any]) -> None:
        """Report what ``releases`` holds at every scrape: per release its state and load time, the candidate
        fraction, and which release serves each channel."""
        if self.enabled:
            self.registry.register(_ReleaseCollector(self.service, releases))

    def phase_observer(self) -> Callable[[str, float], None]:
        """``observe(name, value)`` for the release layer: "<phase>_seconds" durations, "excluded_seen" counts."""
        if not self.enabled:
            return ignore

        def observe(name: str, value: float) -> None:
            if name == "excluded_seen":
                self.excluded_seen.inc(value)
            else:
                self.phase_duration.labels(name.removesuffix("_seconds")).observe(value)

        return observe


class _ReleaseCollector(Collector):
    def __init__(self, service: str, releases: ReleaseManager[Any]) -> None:
        self._service, self._releases = service, releases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "funnel_release_state",
            "1 for the state each release is in here (loading, ready, failed)",
            labels=["release", "state"],
        )
        load = GaugeMetricFamily(
            "funnel_release_load_duration_seconds",
            "How long loading, verifying and warming each release took",
            labels=["release"],
        )
        serving = GaugeMetricFamily(
            "funnel_channel_release", "1 for the release serving each channel here", labels=["channel", "release"]
        )
        for status in self._releases.status():
            for value in LoadState:
                state.add_metric([status.release_id, value.value], float(status.state is value))
            if status.load_seconds is not None:
                load.add_metric([status.release_id], status.load_seconds)
            for channel in status.channels:
                serving.add_metric([channel, status.release_id], 1.0)
        fraction = GaugeMetricFamily(
            "funnel_candidate_fraction", "Share of users the candidate serves here (0 without one)"
        )
        fraction.add_metric([], self._releases.candidate_fraction())
        yield from (state, load, serving, fraction)


class MetricsInterceptor(UnaryInterceptor):
    """Records every unary call's duration by method and status (streams, such as health watches, are left out:
    their length says nothing)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._histogram = metrics.server_call_duration

    def wrap(self, behavior: Behavior, method: str) -> Behavior:
        name = method.lstrip("/")
        by_status: dict[str, Any] = {}  # the histogram's child per status, looked up once

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return behavior(request, context)
            except BaseException as exc:
                code = status_of(exc).name
                raise
            finally:
                child = by_status.get(code)
                if child is None:
                    child = by_status[code] = self._histogram.labels(name, code)
                child.observe(time.perf_counter() - started)

        return timed


class MetricsEndpoint:
    """Serves the registry's metrics at ``http://address/metrics`` from ``start()`` to ``stop()``."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self._metrics, self.address = metrics, address
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), registry=self._metrics.registry)
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
