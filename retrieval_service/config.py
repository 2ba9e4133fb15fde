"""The retrieval service's settings: one frozen dataclass, from flags then environment variables (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.serving.config import setting
from funnel.serving.service import ModelServiceConfig


@dataclass(frozen=True)
class RetrievalServiceConfig(ModelServiceConfig):
    """Retrieval service settings."""

    address: str = setting("FUNNEL_RETRIEVAL_ADDRESS", "127.0.0.1:50052", "host:port to listen on")
