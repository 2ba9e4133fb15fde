"""Offline baselines (global mean, popularity, item-kNN, EASE, iALS) and the top-K metrics they share with Funnel's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from funnel.data.loaders import Interactions
from funnel.release.files import IdIndex

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
    cols = IdIndex(catalog).rows(item_ids)
    unknown = cols < 0
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
        train_rows = IdIndex(users).rows(train.user_ids)  # -1: a training user without test pairs
        known = train_rows >= 0
        seen = np.zeros((len(users), len(items)), dtype=bool)
        seen[train_rows[known], item_columns(items, train.item_ids[known])] = True
        return cls(users, items, seen, pair_rows.astype(np.int64), item_columns(items, test.item_ids))

    @property
    def cold(self) -> np.ndarray:
        """bool per row: the user rated nothing in training."""
        return np.logical_not(self.seen.any(axis=1))


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


def ndcg_at_k(positions: np.ndarray, pair_rows: np.ndarray, k: int) -> float:
    """Mean over test users (rows) of DCG@k / ideal DCG@k with binary gains: a test pair at 0-based position p < k
    gains 1 / log2(p + 2); the ideal list puts min(the user's test pairs, k) of them first."""
    positions, pair_rows = np.asarray(positions), np.asarray(pair_rows, dtype=np.int64)
    if not len(positions):
        raise ValueError("expected at least one test pair")
    rows, pair_rows = np.unique(pair_rows, return_inverse=True)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    hit = positions < k
    dcg = np.bincount(pair_rows[hit], weights=discount[positions[hit]], minlength=len(rows))
    ideal = np.cumsum(discount)[np.minimum(np.bincount(pair_rows, minlength=len(rows)), k) - 1]
    return float(np.mean(dcg / ideal))


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


def item_similarity(history: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """Item-item cosine similarity of the binary history's columns, co-counts / (|i| |j| + shrink), float64 with a
    zero diagonal; an item nobody has is similar to nothing."""
    if shrink < 0:
        raise ValueError(f"expected a shrink >= 0, got {shrink}")
    x = np.asarray(history, dtype=np.float64)
    gram = x.T @ x
    norms = np.sqrt(np.diag(gram))
    denominator = np.outer(norms, norms) + shrink
    similarity = np.divide(gram, denominator, out=np.zeros_like(gram), where=denominator > 0)
    np.fill_diagonal(similarity, 0.0)
    return similarity


def keep_neighbors(similarity: np.ndarray, neighbors: int | None) -> np.ndarray:
    """Each row's ``neighbors`` most similar items (ties by column), the rest zeroed; None keeps every item."""
    if neighbors is None or neighbors >= similarity.shape[1]:
        return similarity
    if neighbors < 1:
        raise ValueError(f"expected neighbors >= 1 (or None for all), got {neighbors}")
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbors]
    kept = np.zeros_like(similarity)
    np.put_along_axis(kept, top, np.take_along_axis(similarity, top, axis=1), axis=1)
    return kept


def item_knn_weights(history: np.ndarray, neighbors: int | None = None, shrink: float = 0.0) -> np.ndarray:
    """Item-kNN weights: row i holds item i's ``neighbors`` most cosine-similar items (see item_similarity), so a
    history row times them sums, for each item, the similarity of the user's items that count it as a neighbor."""
    return keep_neighbors(item_similarity(history, shrink), neighbors)


def item_item_scorer(data: EvalSet, weights: np.ndarray, cold_scores: np.ndarray) -> Scorer:
    """History rows times item-item weights (EASE, item-kNN); a user with no training history gets ``cold_scores``
    (popularity)."""

    def score(rows: np.ndarray) -> np.ndarray:
        history = data.seen[rows]
        scores = history.astype(np.float64) @ weights
        scores[~history.any(axis=1)] = cold_scores
        return scores

    return score


def ials_factors(
    history: np.ndarray, *, factors: int, regularization: float, alpha: float, iterations: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(user factors [rows, factors], item factors [columns, factors]) of the binary user x item ``history`` from
    implicit's CPU AlternatingLeastSquares (confidence 1 + alpha on interactions), on 2 threads, seeded.

    Needs the optional ``implicit`` package (a bench/eval extra, not a project dependency).
    """
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits
    except ImportError as error:
        raise ImportError(
            f"expected the 'implicit' package for the iALS baseline (pip install implicit==0.7.3), got: {error}"
        ) from error
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS threads on top only contend
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            num_threads=2,
            random_state=seed,
        )
        model.fit(csr_matrix(np.asarray(history, dtype=np.float32)), show_progress=False)
    return np.asarray(model.user_factors, dtype=np.float64), np.asarray(model.item_factors, dtype=np.float64)


def factor_scorer(
    data: EvalSet, user_rows: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray, cold_scores: np.ndarray
) -> Scorer:
    """User factors times item factors; EvalSet row r is factor row ``user_rows[r]``, -1 for a user without factors,
    who gets ``cold_scores`` (popularity) as does a user with no training history."""
    if item_factors.shape[0] != len(data.items):
        raise ValueError(f"expected item factors for {len(data.items)} catalog items, got {item_factors.shape[0]}")
    cold = data.cold | (np.asarray(user_rows) < 0)

    def score(rows: np.ndarray) -> np.ndarray:
        scores = user_factors[np.maximum(user_rows[rows], 0)] @ item_factors.T
        scores[cold[rows]] = cold_scores
        return scores

    return score


def user_rows(train: Interactions, data: EvalSet) -> np.ndarray:
    """The training_matrix row of each EvalSet user (int64), -1 for a user not in ``train``."""
    users = np.unique(train.user_ids)
    if not len(users):
        return np.full(len(data.users), -1, dtype=np.int64)
    return IdIndex(users).rows(data.users)


def rank_baselines(train: Interactions, data: EvalSet, lam: float = EASE_LAMBDA) -> dict[str, Positions]:
    """Positions of the test pairs under popularity and EASE, both with cold-start users ranked by popularity."""
    counts = popularity_counts(train, data.items)
    weights = ease_weights(training_matrix(train, data.items), lam)
    return {
        "popularity": rank_by_scores(popularity_scorer(counts), data),
        "ease": rank_by_scores(item_item_scorer(data, weights, counts), data),
    }
