"""Offline metrics of a release directory computed through its exported SavedModels, i.e. what would serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from funnel.tf import load_serving_signature, tf

import numpy as np

from funnel.data.loaders import Interactions
from funnel.errors import ReleaseError
from funnel.release.files import Histories, IdIndex, pad_histories
from funnel.release.store import CANDIDATE_TOWER_DIR, INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR
from trainer.baselines import rmse
from trainer.index import ITEM_IDS_FILE
from trainer.models import TOP_KS

SCORE_BLOCK = 1 << 24  # query × catalog scores held at once (64 MiB of float32)
MISS = np.iinfo(np.int64).max  # the rank of a positive that cannot be retrieved


class Signature(Protocol):
    """A SavedModel signature (a TensorFlow concrete function; TensorFlow is untyped): called with tensors by input
    name, it returns tensors by output name."""

    @property
    def structured_input_signature(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """((), {input name: tf.TensorSpec}): a signature takes keyword inputs only."""

    @property
    def structured_outputs(self) -> dict[str, Any]:
        """{output name: tf.TensorSpec}."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, tf.Tensor]: ...


@dataclass(frozen=True)
class Evaluation:
    """Retrieval top-K accuracies over the catalog {"top_1": .., ..., "top_100": ..}, the user's training items
    counted (FactorizedTopK) and excluded (recall, as served), and the ranker's RMSE, all on the same test data."""

    top_k: dict[str, float]
    recall: dict[str, float]
    rmse: float

    def as_metrics(self) -> dict[str, object]:
        """The manifest's metric names."""
        return {"retrieval_top_k": dict(self.top_k), "retrieval_recall": dict(self.recall), "ranking_rmse": self.rmse}


def load_signature(release_dir: Path, part: str) -> Signature:
    """The serving_default signature of the release's ``part`` SavedModel; ReleaseError when there is none."""
    path = Path(release_dir) / part
    if not path.is_dir():
        raise ReleaseError(f"release {path.parent.name}: expected a {part}/ SavedModel, found none in {path.parent}")
    return load_serving_signature(path)  # as the services load it


def run_batched(serve: Signature, output: str, batch: int, **inputs: np.ndarray) -> np.ndarray:
    """``serve(**inputs)[output]`` over slices of ``batch`` rows, concatenated."""
    n = len(next(iter(inputs.values())))
    slices = ({k: tf.constant(v[s : s + batch]) for k, v in inputs.items()} for s in range(0, n, batch))
    return np.concatenate([serve(**tensors)[output].numpy() for tensors in slices])


def embed_users(query_tower: Signature, user_ids: np.ndarray, histories: Histories, batch: int) -> np.ndarray:
    """The query tower's embedding of each user; a tower whose signature reads ``history`` (v2) gets the user's
    training items, padded per batch; a v1 tower gets the user id alone."""
    reads_history = "history" in query_tower.structured_input_signature[1]
    parts = []
    for start in range(0, len(user_ids), batch):
        users = np.asarray(user_ids[start : start + batch]).astype(str)
        inputs = {"user_id": tf.constant(users)}
        if reads_history:
            inputs["history"] = tf.constant(histories.padded(users))
        parts.append(query_tower(**inputs)["embedding"].numpy())
    if not parts:
        raise ValueError("expected at least one user to embed, got none")
    return np.concatenate(parts)


def rank_pairs(ranker: Signature, pairs: Interactions, histories: Histories, batch: int) -> np.ndarray:
    """The ranker's rating prediction (its "rating" output when it has one, else "score") of each (user, item) pair;
    a ranker whose signature reads ``history`` (v2) gets each user's items from ``histories`` and their pairs as one
    row of candidates, a v1 ranker the pairs alone."""
    output = "rating" if "rating" in ranker.structured_outputs else "score"
    if "history" not in ranker.structured_input_signature[1]:
        return run_batched(ranker, output, batch, user_id=pairs.user_ids, item_id=pairs.item_ids)
    users, pair_user = np.unique(np.asarray(pairs.user_ids).astype(str), return_inverse=True)
    order = np.argsort(pair_user, kind="stable")
    bounds = np.searchsorted(pair_user[order], np.arange(len(users) + 1))
    predicted = np.empty(len(pairs), dtype=np.float64)
    step = max(1, batch // 64)  # users per call
    for start in range(0, len(users), step):
        rows = range(start, min(start + step, len(users)))
        candidates = [pairs.item_ids[order[bounds[r] : bounds[r + 1]]] for r in rows]
        out = ranker(
            user_id=tf.constant(users[start : start + len(rows)]),
            history=tf.constant(histories.padded(users[start : start + len(rows)])),
            item_id=tf.constant(pad_histories(candidates)),
        )[output].numpy()
        for k, r in enumerate(rows):
            predicted[order[bounds[r] : bounds[r + 1]]] = out[k, : bounds[r + 1] - bounds[r]]
    return predicted


def _shares(better: np.ndarray) -> dict[str, float]:
    return {f"top_{k}": float(np.mean(better < k)) for k in TOP_KS}


def factorized_top_k(queries: np.ndarray, positives: np.ndarray, catalog: np.ndarray) -> dict[str, float]:
    """Share of rows whose positive scores within the top K of the catalog (ties count in, as tf.math.in_top_k)."""
    better = np.empty(len(queries), dtype=np.int64)  # catalog items scoring strictly above the positive
    chunk = max(1, SCORE_BLOCK // max(len(catalog), 1))
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        positive = np.sum(q * positives[s : s + chunk], axis=1, keepdims=True)
        better[s : s + chunk] = np.sum(q @ catalog.T > positive, axis=1)
    return _shares(better)


def recall_unseen(
    queries: np.ndarray,
    catalog: np.ndarray,
    catalog_ids: np.ndarray,
    histories: Histories,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> dict[str, float]:
    """Share of test pairs (user_ids[i], item_ids[i]) whose item is among the K best-scoring catalog items once the
    user's training items are removed (ties count in), as served; ``queries[i]`` is the user's query embedding.

    A pair whose item is outside the catalog or among the user's training items counts as a miss.
    """
    catalog_rows = IdIndex(catalog_ids)  # -1 for ids outside the catalog
    seen_rows, user_rows = catalog_rows.rows(histories.items), histories.rows(user_ids)
    targets = catalog_rows.rows(item_ids)
    better = np.empty(len(queries), dtype=np.int64)  # unseen catalog items scoring strictly above the positive
    chunk = max(1, SCORE_BLOCK // max(len(catalog), 1))
    for s in range(0, len(queries), chunk):
        scores = queries[s : s + chunk] @ catalog.T
        rows = user_rows[s : s + chunk]
        starts, ends = histories.indptr[rows], histories.indptr[rows + 1]
        lengths = np.where(rows >= 0, ends - starts, 0)
        pair = np.repeat(np.arange(len(rows)), lengths)
        seen = seen_rows[np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(len(pair))]
        scores[pair[seen >= 0], seen[seen >= 0]] = -np.inf
        target = targets[s : s + chunk]
        positive = np.where(target >= 0, scores[np.arange(len(rows)), target], -np.inf)[:, None]
        better[s : s + chunk] = np.where(np.isfinite(positive[:, 0]), np.sum(scores > positive, axis=1), MISS)
    return _shares(better)


def evaluate_release(
    release_dir: Path,
    test: Interactions,
    histories: Histories,
    batch_size: int = 4096,
    max_pairs: int | None = None,
    seed: int = 42,
) -> Evaluation:
    """Retrieval top-K through the query and candidate towers over the index's items, with the users' training
    items (``histories``, also the v2 query tower's and ranker's input) counted and excluded, on ``test`` or, with
    ``max_pairs``, on a sample of that many of its pairs drawn with ``seed``; the ranker's RMSE on all of ``test``
    (its "rating" output when it has one, else "score")."""
    release_dir = Path(release_dir)
    ranker_rmse = rmse(rank_pairs(load_signature(release_dir, RANKER_DIR), test, histories, batch_size), test.ratings)
    if max_pairs is not None and max_pairs < len(test):
        test = test.take(np.sort(np.random.default_rng(seed).choice(len(test), max_pairs, replace=False)))
    query_tower = load_signature(release_dir, QUERY_TOWER_DIR)
    candidate_tower = load_signature(release_dir, CANDIDATE_TOWER_DIR)
    item_ids = np.load(release_dir / INDEX_DIR / ITEM_IDS_FILE, allow_pickle=False).astype(np.int64)
    users, pair_user = np.unique(test.user_ids, return_inverse=True)
    queries = embed_users(query_tower, users, histories, batch_size)[pair_user]
    catalog = run_batched(candidate_tower, "embedding", batch_size, item_id=item_ids)
    positives = run_batched(candidate_tower, "embedding", batch_size, item_id=test.item_ids)
    top_k = factorized_top_k(queries, positives, catalog)
    recall = recall_unseen(queries, catalog, item_ids, histories, test.user_ids, test.item_ids)
    return Evaluation(top_k, recall, ranker_rmse)
