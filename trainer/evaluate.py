"""Offline metrics of a release directory computed through its exported SavedModels, i.e. what would serve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.data import Interactions
from funnel.errors import ReleaseError
from funnel.release import CANDIDATE_TOWER_DIR, INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR
from funnel.tf import tf
from trainer.index import ITEM_IDS_FILE
from trainer.models import TOP_KS

SCORE_BLOCK = 1 << 24  # query × catalog scores held at once (64 MiB of float32)
Signature = Callable[..., dict[str, tf.Tensor]]


@dataclass(frozen=True)
class Evaluation:
    """FactorizedTopK accuracies {"top_1": .., ..., "top_100": ..} and the ranker's RMSE on the same test data."""

    top_k: dict[str, float]
    rmse: float

    def as_metrics(self) -> dict[str, object]:
        """The manifest's metric names."""
        return {"retrieval_top_k": dict(self.top_k), "ranking_rmse": self.rmse}


def load_signature(release_dir: Path, part: str) -> Signature:
    """The serving_default signature of the release's ``part`` SavedModel; ReleaseError when there is none."""
    path = Path(release_dir) / part
    if not path.is_dir():
        raise ReleaseError(f"release {path.parent.name}: expected a {part}/ SavedModel, found none in {path.parent}")
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def run_batched(serve: Signature, output: str, batch: int, **inputs: np.ndarray) -> np.ndarray:
    """``serve(**inputs)[output]`` over slices of ``batch`` rows, concatenated."""
    n = len(next(iter(inputs.values())))
    slices = ({k: tf.constant(v[s : s + batch]) for k, v in inputs.items()} for s in range(0, n, batch))
    return np.concatenate([serve(**tensors)[output].numpy() for tensors in slices])


def factorized_top_k(queries: np.ndarray, positives: np.ndarray, catalog: np.ndarray) -> dict[str, float]:
    """Share of rows whose positive scores within the top K of the catalog (ties count in, as tf.math.in_top_k)."""
    better = np.empty(len(queries), dtype=np.int64)  # catalog items scoring strictly above the positive
    chunk = max(1, SCORE_BLOCK // max(len(catalog), 1))
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        positive = np.sum(q * positives[s : s + chunk], axis=1, keepdims=True)
        better[s : s + chunk] = np.sum(q @ catalog.T > positive, axis=1)
    return {f"top_{k}": float(np.mean(better < k)) for k in TOP_KS}


def evaluate_release(release_dir: Path, test: Interactions, batch_size: int = 4096) -> Evaluation:
    """Top-K accuracy of query tower vs candidate tower over the index's items, and ranker RMSE, on ``test``."""
    release_dir = Path(release_dir)
    query_tower = load_signature(release_dir, QUERY_TOWER_DIR)
    candidate_tower = load_signature(release_dir, CANDIDATE_TOWER_DIR)
    ranker = load_signature(release_dir, RANKER_DIR)
    item_ids = np.load(release_dir / INDEX_DIR / ITEM_IDS_FILE, allow_pickle=False).astype(np.int64)
    top_k = factorized_top_k(
        run_batched(query_tower, "embedding", batch_size, user_id=test.user_ids),
        run_batched(candidate_tower, "embedding", batch_size, item_id=test.item_ids),
        run_batched(candidate_tower, "embedding", batch_size, item_id=item_ids),
    )
    scores = run_batched(ranker, "score", batch_size, user_id=test.user_ids, item_id=test.item_ids)
    rmse = float(np.sqrt(np.mean((scores.astype(np.float64) - test.ratings) ** 2)))
    return Evaluation(top_k, rmse)
