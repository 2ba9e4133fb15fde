"""The gateway's settings: one frozen dataclass, from flags then environment variables."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import grpc

from funnel.serving.config import ConfigError, setting
from funnel.serving.service import ServiceConfig
from funnel.tls import channel_credentials

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:50054"


def is_loopback(address: str) -> bool:
    """True when ``host:port`` listens on loopback only (reachable from this machine or pod alone)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GatewayServiceConfig(ServiceConfig):
    """Gateway settings."""

    address: str = setting("FUNNEL_GATEWAY_ADDRESS", "127.0.0.1:50051", "host:port to listen on")
    retrieval_target: str = setting(
        "FUNNEL_RETRIEVAL_TARGET",
        "127.0.0.1:50052",
        "retrieval service target (host:port or dns:///name:port for replicas)",
    )
    ranking_target: str = setting(
        "FUNNEL_RANKING_TARGET",
        "127.0.0.1:50053",
        "ranking service target (host:port or dns:///name:port for replicas)",
    )
    retrieval_timeout: float = setting("FUNNEL_RETRIEVAL_TIMEOUT", 1.0, "seconds allowed for retrieval per request")
    ranking_timeout: float = setting("FUNNEL_RANKING_TIMEOUT", 1.0, "seconds allowed for ranking per request")
    max_batch: int = setting("FUNNEL_MAX_BATCH", 32, "requests coalesced into one stage call at most (1: no batching)")
    max_in_flight: int = setting("FUNNEL_MAX_IN_FLIGHT", 1, "stage batches running at once per release")
    batch_window_ms: float = setting(
        "FUNNEL_BATCH_WINDOW_MS",
        3.0,
        "ms at most a new stage batch waits to gather as many requests as the previous one held (0: never)",
    )
    admin_address: str = setting(
        "FUNNEL_ADMIN_ADDRESS",
        DEFAULT_ADMIN_ADDRESS,
        "host:port of the AdminService (rollout control), a server of its own; anything but loopback needs "
        "FUNNEL_ADMIN_TOKEN",
    )
    admin_token: str = setting(
        "FUNNEL_ADMIN_TOKEN", "", "when set, AdminService calls need 'authorization: Bearer <token>'"
    )
    stage_tls_ca: str = setting(
        "FUNNEL_STAGE_TLS_CA", "", "PEM CA bundle that signed the stages' certificates: call the stages over TLS"
    )
    stage_tls_cert: str = setting(
        "FUNNEL_STAGE_TLS_CERT", "", "PEM client certificate shown to the stages (mutual TLS; with its key)"
    )
    stage_tls_key: str = setting("FUNNEL_STAGE_TLS_KEY", "", "PEM private key of FUNNEL_STAGE_TLS_CERT")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.admin_token and not is_loopback(self.admin_address):
            raise ConfigError(
                f"FUNNEL_ADMIN_ADDRESS {self.admin_address!r} is not loopback: set FUNNEL_ADMIN_TOKEN so rollout "
                "control is not open to anyone who can reach it (or listen on 127.0.0.1)"
            )

    def stage_credentials(self) -> grpc.ChannelCredentials | None:
        return channel_credentials(
            self.stage_tls_ca, self.stage_tls_cert, self.stage_tls_key, prefix="FUNNEL_STAGE_TLS"
        )
