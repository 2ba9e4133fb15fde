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
from funnel.serving.config import setting
from funnel.serving.interceptors import ErrorInterceptor, RequestLog, ServerInterceptor
from funnel.serving.manager import ReleaseManager
from funnel.serving.server import Health, build_server
from funnel.serving.workers import Worker

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
    max_workers: int = setting("FUNNEL_MAX_WORKERS", 16, "gRPC worker threads")
    max_connection_age: float = setting(
        "FUNNEL_MAX_CONNECTION_AGE",
        10.0,
        "seconds a client connection lives before the server asks the client to reconnect, which re-resolves its "
        "target and so finds replicas added since (0: forever)",
    )
    request_log_interval: float = setting(
        "FUNNEL_REQUEST_LOG_INTERVAL", 30.0, "seconds between the 'served ...' request tally lines in the log"
    )


@dataclass(frozen=True)
class ModelServiceConfig(ServiceConfig):
    """Settings of a service that runs TensorFlow models (retrieval, ranking)."""

    tf_threads: int = setting(
        "FUNNEL_TF_THREADS", 1, "TensorFlow intra- and inter-op threads (0: TensorFlow's default, one per core)"
    )


def release_manager(config: ServiceConfig, name: str, load: Callable[[Path, Manifest], R]) -> ReleaseManager[R]:
    """A manager that loads releases from the configured artifact root with ``load`` and warms them."""
    return ReleaseManager(
        ArtifactStore(config.artifact_root),
        load,
        lambda release: release.warmup(),
        name=name,
        poll_interval=config.poll_interval,
    )


class Service(Generic[R]):
    """One service process's parts, built and not started: the gRPC server, the release manager and the
    background workers. ``start()`` starts them; ``stop()`` reports NOT_SERVING, waits out the lame-duck pause,
    stops the workers, and drains the server."""

    def __init__(
        self,
        name: str,
        server: grpc.Server,
        port: int,
        health: Health,
        releases: ReleaseManager[R],
        workers: Sequence[Worker] = (),
    ) -> None:
        self.name, self.server, self.port, self.health, self.releases = name, server, port, health, releases
        self.workers = list(workers)

    def start(self) -> None:
        self.server.start()
        self.releases.start()
        for worker in self.workers:
            worker.start()

    def stop(self, grace: float | None = 0.0, lame_duck: float = 0.0) -> None:
        self.health.shutdown()  # NOT_SERVING from now on: balancers and probes take this replica out
        if lame_duck > 0:
            time.sleep(lame_duck)  # calls still arriving (clients not yet told) are served meanwhile
        for worker in reversed(self.workers):
            worker.stop()
        self.releases.stop()
        self.server.stop(grace).wait()

    def serve_until_signalled(self, config: ServiceConfig) -> None:
        """Start, run until SIGTERM/SIGINT, then stop with the configured lame-duck pause and drain grace."""
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        self.start()
        log.info("%s listening on port %d; artifact root %s", self.name, self.port, config.artifact_root)
        stopping.wait()
        log.info(
            "shutting down: NOT_SERVING for %.1fs, then draining in-flight requests for up to %.1fs",
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
) -> Service[R]:
    """Build (not start) a service: health reports SERVING once ``releases`` serves a stable release and
    ``warm()`` says the rest of the service is ready too. Every call passes the error mapping, the request tally,
    then ``interceptors``."""
    releases = releases or release_manager(config, name, load)
    request_log = RequestLog(config.request_log_interval)
    server, port, health = build_server(
        config.address,
        lambda server: register(server, releases),
        service_names,
        max_workers=config.max_workers,
        max_connection_age=config.max_connection_age,
        connection_age_grace=config.shutdown_grace,
        interceptors=[ErrorInterceptor(), request_log, *interceptors],
    )
    releases.subscribe(lambda ready: health.set_serving(ready and warm()))
    return Service(name, server, port, health, releases, [request_log, *workers])


def run_service(config: C, create: Callable[[C], Service[Any]]) -> None:
    """Run one service process: set TensorFlow's threads (model services), build, serve, drain on SIGTERM."""
    if isinstance(config, ModelServiceConfig):
        from funnel.tf import set_threads  # only model services load TensorFlow

        set_threads(config.tf_threads)  # before the first op: releases load once the service starts
    create(config).serve_until_signalled(config)
