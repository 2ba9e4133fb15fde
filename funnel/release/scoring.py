"""The served order of a user's candidates: the ranker's score blended with the retrieval score."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RETRIEVAL_WEIGHT_KEY = "retrieval_weight"  # in a release manifest's config; absent (releases before it): 0


def retrieval_weight(config: dict[str, Any]) -> float:
    """The blend weight a release was published with (its manifest's config), 0 for releases without one."""
    value = config.get(RETRIEVAL_WEIGHT_KEY, 0.0)
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


def _standardized(scores: np.ndarray) -> np.ndarray:
    """(scores - mean) / std, the population spread; zeros when all are equal. One pass fewer than np.std, and a
    dot product for the sum of squares: this runs twice a request in the gateway."""
    centered = np.asarray(scores, dtype=np.float64)
    if not centered.size:
        return centered
    centered = centered - centered.sum() / centered.size
    spread = math.sqrt(float(np.dot(centered, centered)) / centered.size)
    return centered / spread if spread > 0 else np.zeros_like(centered)


def blend(ranker_scores: np.ndarray, retrieval_scores: np.ndarray, weight: float) -> np.ndarray:
    """float32 order scores for one user's candidates: the ranker's score alone (weight 0), else both scores
    standardized over the candidates (mean 0, spread 1) and added, the retrieval one times ``weight``."""
    if weight == 0:
        return np.asarray(ranker_scores, dtype=np.float32)
    return (_standardized(ranker_scores) + weight * _standardized(retrieval_scores)).astype(np.float32)
