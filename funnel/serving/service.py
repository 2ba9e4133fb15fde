"""What every Funnel service shares: common config fields and the process lifecycle around a ReleaseManager."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from funnel.release.store import ArtifactStore, Manifest
from funnel.serving.config import setting
from funnel.serving.manager import ReleaseManager
from funnel.serving.server import REQUESTS, Health, build_server, serve_until_signalled

log = logging.getLogger(__name__)
REQUEST_LOG_INTERVAL = 30.0  # seconds between "served ..." summary lines


class Warmable(Protocol):
    def warmup(self) -> None: ...


R = TypeVar("R", bound=Warmable)


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every service takes."""

    artifact_root: str = setting("FUNNEL_ARTIFACT_ROOT", help="artifact root holding releases/ and channels/")
    address: str = setting("FUNNEL_ADDRESS", "127.0.0.1:0", "host:port to listen on")
    poll_interval: float = setting("FUNNEL_POLL_INTERVAL", 0.5, "seconds between reads of channels/")
    shutdown_grace: float = setting("FUNNEL_SHUTDOWN_GRACE", 5.0, "seconds to drain in-flight requests on SIGTERM")
    max_workers: int = setting("FUNNEL_MAX_WORKERS", 16, "gRPC worker threads")


@dataclass(frozen=True)
class ModelServiceConfig(ServiceConfig):
    """Settings of a service that runs TensorFlow models (retrieval, ranking)."""

    tf_threads: int = setting(
        "FUNNEL_TF_THREADS", 1, "TensorFlow intra- and inter-op threads (0: TensorFlow's default, one per core)"
    )


def release_manager(config: ServiceConfig, name: str, load: Callable[[Path, Manifest], R]) -> ReleaseManager[R]:
    """A manager that loads releases from the configured artifact root with ``load`` and warms them."""
    return ReleaseManager(ArtifactStore(config.artifact_root), load, lambda release: release.warmup(), name=name)


def create_service_server(
    config: ServiceConfig,
    name: str,
    load: Callable[[Path, Manifest], R],
    register: Callable[[grpc.Server, ReleaseManager[R]], None],
    service_names: list[str],
    releases: ReleaseManager[R] | None = None,
    health: Health | None = None,
    warm: Callable[[], bool] = lambda: True,
) -> tuple[grpc.Server, int]:
    """Build (not start) a service's server; health reports SERVING once ``releases`` has a stable release
    (and ``warm()`` says the rest of the service is ready too).

    Without ``releases`` a manager is created and starts polling the artifact root.
    """
    if releases is None:
        releases = release_manager(config, name, load)
        releases.start(config.poll_interval)
    server, port, health = build_server(
        config.address, lambda s: register(s, releases), service_names, max_workers=config.max_workers, health=health
    )
    releases.subscribe(lambda ready: health.set_serving(ready and warm()))
    return server, port


def serve_service(
    config: ServiceConfig,
    name: str,
    service_names: list[str],
    load: Callable[[Path, Manifest], R],
    create_server: Callable[[ServiceConfig, ReleaseManager[R], Health], tuple[grpc.Server, int]],
) -> None:
    """Run one stage process: load releases in the background, serve, drain on SIGTERM."""
    if isinstance(config, ModelServiceConfig):
        from funnel.tf import set_threads  # only model services load TensorFlow

        set_threads(config.tf_threads)  # before the first op: releases load below
    health = Health(service_names)
    releases = release_manager(config, name, load)
    server, port = create_server(config, releases, health)
    server.start()
    log.info("%s listening on port %d; artifact root %s", name, port, config.artifact_root)
    releases.start(config.poll_interval)
    REQUESTS.start(REQUEST_LOG_INTERVAL)
    serve_until_signalled(server, health, config.shutdown_grace, on_stop=releases.stop)
