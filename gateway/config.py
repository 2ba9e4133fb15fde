"""The gateway's settings: one frozen dataclass, from flags then environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.serving.config import setting
from funnel.serving.service import ServiceConfig


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
    admin_token: str = setting(
        "FUNNEL_ADMIN_TOKEN", "", "when set, AdminService calls need 'authorization: Bearer <token>'"
    )
