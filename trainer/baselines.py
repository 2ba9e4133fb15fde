"""Offline baselines (global mean, popularity, EASE) and the top-K metrics they share with Funnel's; numpy only."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from funnel.data import Interactions

MAX_K = 200  # the longest list ranked; recall@K is defined for K <= MAX_K
EASE_LAMBDA = 500.0
SCORE_BLOCK = 1 << 22  # user x catalog scores held at once (32 MiB of float64)
ABSENT = np.iinfo(np.int64).max  # the position of an item that is not in the list

Scorer = Callable[[np.ndarray], np.ndarray]
"""EvalSet rows -> float scores [len(rows), number of catalog items], one column per catalog item."""


def item_columns(catalog: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """The position of each item id in ``catalog`` (int64); ValueError for an id not in the catalog."""
    catalog, item_ids = np.asarray(catalog, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
    if not len(catalog):
        raise ValueError("expected a non-empty catalog")
    order = np.argsort(catalog, kind="stable")
    cols = order[np.minimum(np.searchsorted(catalog, item_ids, sorter=order), len(catalog) - 1)]
    unknown = catalog[cols] != item_ids
    if unknown.any():
        raise ValueError(f"expected catalog item ids, got item id {int(item_ids[unknown][0])}")
    return cols


@dataclass(frozen=True)
class EvalSet:
    """A split in dense coordinates: one row per distinct test user, one column per catalog item."""

    users: np.ndarray  # str ids of the test users, sorted; row r is users[r]
    items: np.ndarray  # int64 catalog item ids; column c is items[c]
    seen: np.ndarray  # bool [rows, columns]: the user rated the item in training
    pair_rows: np.ndarray  # int64 row of each test (user, item) pair, in test order
    pair_cols: np.ndarray  # int64 column of each test pair's item

    @classmethod
    def build(cls, train: Interactions, test: Interactions, catalog: np.ndarray) -> EvalSet:
        items = np.asarray(catalog, dtype=np.int64)
        users, pair_rows = np.unique(test.user_ids, return_inverse=True)
        known = np.isin(train.user_ids, users)
        seen = np.zeros((len(users), len(items)), dtype=bool)
        seen[np.searchsorted(users, train.user_ids[known]), item_columns(items, train.item_ids[known])] = True
        return cls(users, items, seen, pair_rows.astype(np.int64), item_columns(items, test.item_ids))

    @property
    def cold(self) -> np.ndarray:
        """bool per row: the user rated nothing in training."""
        return ~self.seen.any(axis=1)


@dataclass(frozen=True)
class Positions:
    """Where each test pair's item lands, 0-based: ``unseen`` in the user's list with training items removed
    (ABSENT when not listed); ``incl_seen`` in the whole catalog ranked by score, seen items counted (FactorizedTopK),
    or None for a ranker that only yields lists. Equal scores rank by catalog order in both."""

    unseen: np.ndarray
    incl_seen: np.ndarray | None = None


def hit_rates(positions: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Share of test pairs with position < K for each K: recall@K from Positions.unseen, FactorizedTopK top-K
    accuracy from Positions.incl_seen."""
    positions = np.asarray(positions)
    if not len(positions):
        raise ValueError("expected at least one test pair")
    return {int(k): float(np.mean(positions < k)) for k in ks}


def list_positions(lists: np.ndarray, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The position of targets[i] in lists[rows[i]] (a [users, K] array padded with -1), ABSENT when not there."""
    match = lists[rows] == np.asarray(targets)[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), ABSENT).astype(np.int64)


def top_k_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """Columns of each row's k best-scoring unseen items, best first, ties by column; -1 where fewer remain."""
    masked = np.where(seen, -np.inf, scores)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    order = np.where(np.isneginf(np.take_along_axis(masked, order, axis=1)), -1, order)
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)


def catalog_positions(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The position of item cols[i] when row rows[i] of ``scores`` ranks the whole catalog, ties by column.

    As TFRS FactorizedTopK with id-based evaluation (tf.math.top_k keeps the lower index first on ties); with
    continuous scores this is also its score-based result (the number of items scoring strictly above).
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    positions = np.empty(len(rows), dtype=np.int64)
    block = max(1, SCORE_BLOCK // max(scores.shape[1], 1))
    for start in range(0, len(rows), block):
        r, c = rows[start : start + block], cols[start : start + block]
        row_scores, target = scores[r], scores[r, c][:, None]
        earlier = np.arange(scores.shape[1]) < c[:, None]
        positions[start : start + block] = np.sum((row_scores > target) | ((row_scores == target) & earlier), axis=1)
    return positions


def rank_by_scores(scorer: Scorer, data: EvalSet, k: int = MAX_K) -> Positions:
    """Positions of the test pairs when every test user's catalog is ranked by ``scorer`` (in row blocks)."""
    num_rows = len(data.users)
    block = max(1, SCORE_BLOCK // max(len(data.items), 1))
    lists = np.empty((num_rows, k), dtype=np.int64)
    in_catalog = np.empty(len(data.pair_rows), dtype=np.int64)
    for start in range(0, num_rows, block):
        stop = min(start + block, num_rows)
        scores = np.asarray(scorer(np.arange(start, stop)))
        lists[start:stop] = top_k_unseen(scores, data.seen[start:stop], k)
        pairs = np.flatnonzero((data.pair_rows >= start) & (data.pair_rows < stop))
        in_catalog[pairs] = catalog_positions(scores, data.pair_rows[pairs] - start, data.pair_cols[pairs])
    return Positions(list_positions(lists, data.pair_rows, data.pair_cols), in_catalog)


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64).reshape(-1) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def global_mean_rmse(train: Interactions, test: Interactions) -> float:
    """RMSE of predicting the mean training rating for every test rating."""
    return rmse(np.full(len(test), np.mean(train.ratings, dtype=np.float64)), test.ratings)


def popularity_counts(train: Interactions, catalog: np.ndarray) -> np.ndarray:
    """Training interactions per catalog item (float64, catalog order)."""
    return np.bincount(item_columns(catalog, train.item_ids), minlength=len(catalog)).astype(np.float64)


def ease_weights(history: np.ndarray, lam: float = EASE_LAMBDA) -> np.ndarray:
    """EASE item-item weights in closed form: P = (XᵀX + λI)⁻¹, B = I − P / diag(P) (zero diagonal), float64."""
    x = np.asarray(history, dtype=np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)  # column j divided by P_jj
    np.fill_diagonal(b, 0.0)
    return b


def training_matrix(train: Interactions, catalog: np.ndarray) -> np.ndarray:
    """The binary user x item matrix of the training interactions (every training user, catalog columns)."""
    _, rows = np.unique(train.user_ids, return_inverse=True)
    x = np.zeros((int(rows.max()) + 1 if len(rows) else 0, len(catalog)), dtype=bool)
    x[rows, item_columns(catalog, train.item_ids)] = True
    return x


def popularity_scorer(counts: np.ndarray) -> Scorer:
    return lambda rows: np.broadcast_to(counts, (len(rows), len(counts)))


def ease_scorer(data: EvalSet, weights: np.ndarray, cold_scores: np.ndarray) -> Scorer:
    """History rows times EASE weights; a user with no training history gets ``cold_scores`` (popularity)."""

    def score(rows: np.ndarray) -> np.ndarray:
        history = data.seen[rows]
        scores = history.astype(np.float64) @ weights
        scores[~history.any(axis=1)] = cold_scores
        return scores

    return score


def rank_baselines(train: Interactions, data: EvalSet, lam: float = EASE_LAMBDA) -> dict[str, Positions]:
    """Positions of the test pairs under popularity and EASE, both with cold-start users ranked by popularity."""
    counts = popularity_counts(train, data.items)
    weights = ease_weights(training_matrix(train, data.items), lam)
    return {
        "popularity": rank_by_scores(popularity_scorer(counts), data),
        "ease": rank_by_scores(ease_scorer(data, weights, counts), data),
    }
