"""What every Funnel service shares: common settings, and a Service that owns its server, releases and workers."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc

from funnel.release.store import ArtifactStore, Manifest
from funnel.serving.config import ConfigError, setting
from funnel.serving.interceptors import DecodeGuard, ErrorInterceptor, InFlightLimit, RequestLog, ServerInterceptor
from funnel.serving.logs import configure_logging
from funnel.serving.manager import ReleaseManager
from funnel.serving.metrics import Metrics, MetricsEndpoint, MetricsInterceptor
from funnel.serving.server import Health, build_server
from funnel.serving.tracing import Tracing, TracingInterceptor, tracing_enabled
from funnel.serving.workers import Worker
from funnel.tls import server_credentials

log = logging.getLogger(__name__)


class Warmable(Protocol):
    def warmup(self) -> None: ...


R = TypeVar("R", bound=Warmable)
C = TypeVar("C", bound="ServiceConfig")


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every service takes."""

    artifact_root: str = setting("FUNNEL_ARTIFACT_ROOT", help="artifact root holding releases/ and channels/")
    address: str = setting("FUNNEL_ADDRESS", "127.0.0.1:0", "host:port to listen on")
    poll_interval: float = setting("FUNNEL_POLL_INTERVAL", 0.5, "seconds between reads of channels/")
    lame_duck: float = setting(
        "FUNNEL_LAME_DUCK", 1.0, "seconds between reporting NOT_SERVING on SIGTERM and refusing new calls"
    )
    shutdown_grace: float = setting("FUNNEL_SHUTDOWN_GRACE", 5.0, "seconds to drain in-flight requests on SIGTERM")
    max_requests: int = setting(
        "FUNNEL_MAX_REQUESTS",
        128,
        "calls handled at once (health checks aside); one more is refused RESOURCE_EXHAUSTED at once, not queued",
    )
    max_workers: int = setting(
        "FUNNEL_MAX_WORKERS",
        160,
        "gRPC worker threads, and the open calls (streams such as health watches included) a server takes; must "
        "exceed FUNNEL_MAX_REQUESTS",
    )
    max_connection_age: float = setting(
        "FUNNEL_MAX_CONNECTION_AGE",
        10.0,
        "seconds a client connection lives before the server asks the client to reconnect, which re-resolves its "
        "target and so finds replicas added since (0: forever)",
    )
    request_log_interval: float = setting(
        "FUNNEL_REQUEST_LOG_INTERVAL", 30.0, "seconds between the 'served ...' request tally lines in the log"
    )
    log_format: str = setting(
        "FUNNEL_LOG_FORMAT", "text", "log lines as 'text', or 'json' (one object a line, with the request's trace_id)"
    )
    metrics_address: str = setting(
        "FUNNEL_METRICS_ADDRESS", "", "host:port serving Prometheus metrics at /metrics over HTTP (empty: not served)"
    )
    tls_cert: str = setting("FUNNEL_TLS_CERT", "", "PEM certificate chain: serve TLS only (with FUNNEL_TLS_KEY)")
    tls_key: str = setting("FUNNEL_TLS_KEY", "", "PEM private key of FUNNEL_TLS_CERT")
    tls_client_ca: str = setting(
        "FUNNEL_TLS_CLIENT_CA", "", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)"
    )

    def __post_init__(self) -> None:
        if not 0 < self.max_requests < self.max_workers:
            raise ConfigError(
                f"expected 0 < FUNNEL_MAX_REQUESTS < FUNNEL_MAX_WORKERS (threads must remain for health checks and "
                f"streams), got {self.max_requests} and {self.max_workers}"
            )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        return server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca)

    def new_metrics(self, service: str) -> Metrics:
        """The service's metrics: recorded only when they are served (a metrics address is set)."""
        return Metrics(service, enabled=bool(self.metrics_address))


@dataclass(frozen=True)
class ModelServiceConfig(ServiceConfig):
    """Settings of a service that runs TensorFlow models (retrieval, ranking)."""

    tf_threads: int = setting(
        "FUNNEL_TF_THREADS", 1, "TensorFlow intra- and inter-op threads (0: TensorFlow's default, one per core)"
    )


@dataclass(frozen=True)
class AdminEndpoint:
    """A second server of a service, for its admin API: its address, servicers and the interceptors (auth) that
    guard it."""

    address: str
    register: Callable[[grpc.Server], None]
    service_names: Sequence[str]
    interceptors: Sequence[ServerInterceptor] = ()


def release_manager(config: ServiceConfig, name: str, load: Callable[[Path, Manifest], R]) -> ReleaseManager[R]:
    """A manager that loads releases from the configured artifact root with ``load`` and warms them."""
    return ReleaseManager(
        ArtifactStore(config.artifact_root),
        load,
        lambda release: release.warmup(),
        name=name,
        poll_interval=config.poll_interval,
    )


@dataclass(frozen=True)
class Endpoint:
    """One listening gRPC server of a service: the public API, or the gateway's admin API."""

    name: str
    server: grpc.Server
    port: int


class Service(Generic[R]):
    """One service process's parts, built and not started: its gRPC servers, the release manager and the
    background workers. ``start()`` starts them; ``stop()`` drains (see there)."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[Endpoint],
        health: Health,
        releases: ReleaseManager[R],
        workers: Sequence[Worker] = (),
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``tracing`` starts first and stops last, so every span of a drained call is exported."""
        self.name, self.health, self.releases = name, health, releases
        self.metrics = metrics or Metrics(name, enabled=False)
        self.tracing = tracing
        self.endpoints = {endpoint.name: endpoint for endpoint in endpoints}
        self.workers = list(workers)

    @property
    def port(self) -> int:
        """The public API's port."""
        return self.endpoints["api"].port

    @property
    def metrics_port(self) -> int | None:
        """The port serving /metrics once started (None when metrics are not served)."""
        return next((w.port for w in self.workers if isinstance(w, MetricsEndpoint)), None)

    def start(self) -> None:
        if self.tracing is not None:
            self.tracing.start()
        for endpoint in self.endpoints.values():
            endpoint.server.start()
        self.releases.start()
        for worker in self.workers:
            worker.start()

    def stop(self, grace: float | None = 0.0, lame_duck: float = 0.0) -> None:
        """Drain: health reports NOT_SERVING at once, so balancers and watching clients move away, while calls
        still arriving are served for ``lame_duck`` seconds; then health Watch streams end, the servers refuse new
        calls, and calls in flight get up to ``grace`` seconds to finish."""
        self.health.shutdown()
        if lame_duck > 0:
            time.sleep(lame_duck)
        for worker in reversed(self.workers):
            worker.stop()
        self.releases.stop()
        self.health.close()
        stopped = [endpoint.server.stop(grace) for endpoint in self.endpoints.values()]
        for done in stopped:
            done.wait()
        if self.tracing is not None:
            self.tracing.stop()

    def serve_until_signalled(self, config: ServiceConfig) -> None:
        """Start, run until SIGTERM/SIGINT, then stop with the configured lame-duck pause and drain grace."""
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        self.start()
        ports = ", ".join(f"{e.name} on port {e.port}" for e in self.endpoints.values())
        log.info("%s listening: %s; artifact root %s", self.name, ports, config.artifact_root)
        stopping.wait()
        log.info(
            "shutting down: NOT_SERVING, still serving for %.1fs, then draining in-flight requests for up to %.1fs",
            config.lame_duck,
            config.shutdown_grace,
        )
        self.stop(config.shutdown_grace, config.lame_duck)
        log.info("stopped")


def create_service(
    config: ServiceConfig,
    name: str,
    load: Callable[[Path, Manifest], R],
    register: Callable[[grpc.Server, ReleaseManager[R]], None],
    service_names: Sequence[str],
    *,
    releases: ReleaseManager[R] | None = None,
    interceptors: Sequence[ServerInterceptor] = (),
    workers: Sequence[Worker] = (),
    warm: Callable[[], bool] = lambda: True,
    admin: AdminEndpoint | None = None,
    metrics: Metrics | None = None,
) -> Service[R]:
    """Build (not start) a service: health reports SERVING once ``releases`` serves a stable release and
    ``warm()`` says the rest of the service is ready too. Every call passes the error mapping, the request tally,
    the undecodable-request guard, the call metrics, the in-flight limit, then ``interceptors``. ``admin`` adds a
    second server; ``metrics`` (a new Metrics by default) are served on config.metrics_address when set."""
    releases = releases or release_manager(config, name, load)
    metrics = metrics or config.new_metrics(name)
    metrics.watch_releases(releases)
    request_log = RequestLog(config.request_log_interval)
    tracing = Tracing(name) if tracing_enabled() else None
    first: list[ServerInterceptor] = [ErrorInterceptor(), request_log, *([TracingInterceptor()] if tracing else [])]
    then = [DecodeGuard(), *([MetricsInterceptor(metrics)] if metrics.enabled else [])]
    credentials = config.server_credentials()
    health = Health([*service_names, *(admin.service_names if admin else ())])
    server, port, _ = build_server(
        config.address,
        lambda server: register(server, releases),
        service_names,
        max_workers=config.max_workers,
        max_connection_age=config.max_connection_age,
        connection_age_grace=config.shutdown_grace,
        interceptors=[*first, *then, InFlightLimit(config.max_requests), *interceptors],
        credentials=credentials,
        health=health,
    )
    endpoints = [Endpoint("api", server, port)]
    if admin is not None:
        admin_server, admin_port, _ = build_server(
            admin.address,
            admin.register,
            admin.service_names,
            max_workers=8,
            interceptors=[*first, *admin.interceptors, *then],  # auth first: a caller without the token learns nothing
            credentials=credentials,
            health=health,
        )
        endpoints.append(Endpoint("admin", admin_server, admin_port))
    releases.subscribe(lambda ready: health.set_serving(ready and warm()))
    endpoint = [MetricsEndpoint(metrics, config.metrics_address)] if config.metrics_address else []
    return Service(name, endpoints, health, releases, [request_log, *endpoint, *workers], metrics, tracing)


def run_service(name: str, config: C, create: Callable[[C], Service[Any]]) -> None:
    """Run one service process: logging, TensorFlow's threads (model services), build, serve, drain on SIGTERM."""
    try:
        configure_logging(name, config.log_format)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(config, ModelServiceConfig):
        from funnel.tf import set_threads  # only model services load TensorFlow

        set_threads(config.tf_threads)  # before the first op: releases load once the service starts
    create(config).serve_until_signalled(config)
