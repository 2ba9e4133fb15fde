"""Implicit ALS (Hu, Koren and Volinsky, 2008): user and item factors fitted to which items users interacted with."""

from __future__ import annotations

import numpy as np

SPREAD_SAMPLE_USERS = 1000  # users whose unseen-item scores estimate the spread of the iALS score


def _grouped(pairs: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr [rows + 1], columns) of (row, column) pairs grouped by row."""
    order = np.argsort(pairs[:, 0], kind="stable")
    indptr = np.searchsorted(pairs[order, 0], np.arange(rows + 1))
    return indptr, pairs[order, 1]


def _solve(
    fixed: np.ndarray,
    indptr: np.ndarray,
    columns: np.ndarray,
    alpha: float,
    l2: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's exact least-squares factor given the other side's ``fixed`` factors, an observed cell's confidence
    1 + alpha (times its weight in ``weights``, aligned with ``columns``, when given); rows without pairs get 0."""
    unobserved = gram(fixed, l2)  # the unobserved cells, confidence 1 and target 0, of every row
    out = np.zeros((len(indptr) - 1, fixed.shape[1]))
    for row in np.flatnonzero(np.diff(indptr)):
        cells = slice(indptr[row], indptr[row + 1])
        observed = fixed[columns[cells]]
        extra = alpha * (np.ones((len(observed), 1)) if weights is None else weights[cells, None])
        out[row] = np.linalg.solve(unobserved + (observed * extra).T @ observed, ((1.0 + extra) * observed).sum(axis=0))
    return out


def fold_in(
    items: np.ndarray, pairs: np.ndarray, num_users: int, *, alpha: float, l2: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """float32 [num_users, d]: each user's exact factor given the item factors and their (user row, item row)
    ``pairs``, pair i observed with confidence 1 + alpha * weights[i] (weights 1 when None), as the served ranker
    computes it from a history."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.argsort(pairs[:, 0], kind="stable")
    indptr = np.searchsorted(pairs[order, 0], np.arange(num_users + 1))
    chosen = None if weights is None else np.asarray(weights, dtype=np.float64)[order]
    return _solve(np.asarray(items, dtype=np.float64), indptr, pairs[order, 1], alpha, l2, chosen).astype(np.float32)


def fit_ials(
    pairs: np.ndarray,
    num_users: int,
    num_items: int,
    *,
    dim: int,
    alpha: float,
    l2: float,
    iterations: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Factors (users [num_users, dim], items [num_items, dim]) minimising
    sum over all cells c_ui (p_ui - <x_u, y_i>)^2 + l2 (|X|^2 + |Y|^2), where p = 1 and c = 1 + alpha on the
    (user row, item row) ``pairs`` and p = 0, c = 1 elsewhere. Rows without pairs keep zero factors."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        raise ValueError("expected (user, item) pairs to factorise, got none")
    if pairs.min() < 0 or pairs[:, 0].max() >= num_users or pairs[:, 1].max() >= num_items:
        raise ValueError(
            f"expected pairs within {num_users} users x {num_items} items, got rows up to "
            f"{pairs[:, 0].max()} x {pairs[:, 1].max()} (min {pairs.min()})"
        )
    by_user, by_item = _grouped(pairs, num_users), _grouped(pairs[:, ::-1], num_items)
    items = np.random.default_rng(seed).normal(0.0, 0.1, (num_items, dim)) * (np.diff(by_item[0]) > 0)[:, None]
    users = np.zeros((num_users, dim))
    for _ in range(iterations):
        users = _solve(items, *by_user, alpha, l2)
        items = _solve(users, *by_item, alpha, l2)
    users = _solve(items, *by_user, alpha, l2)  # against the final items, as a served fold-in computes them
    return users.astype(np.float32), items.astype(np.float32)


def gram(items: np.ndarray, l2: float) -> np.ndarray:
    """YᵀY + l2·I (float64): the part of every user's normal equations that the unobserved cells contribute."""
    items = np.asarray(items, dtype=np.float64)
    return items.T @ items + l2 * np.eye(items.shape[1])


def unseen_spread(users: np.ndarray, items: np.ndarray, pairs: np.ndarray, seed: int) -> float:
    """Standard deviation of <x_u, y_i> over the unseen items (those with pairs) of a seeded sample of the users
    with pairs: the spread an iALS score has across the items a user could be recommended; 0 when there are none."""
    sample = np.unique(pairs[:, 0])
    if len(sample) > SPREAD_SAMPLE_USERS:
        sample = np.sort(np.random.default_rng(seed).choice(sample, SPREAD_SAMPLE_USERS, replace=False))
    known = np.unique(pairs[:, 1])
    scores = users[sample].astype(np.float64) @ items[known].T.astype(np.float64)
    unseen = np.ones_like(scores, dtype=bool)
    chosen = pairs[np.isin(pairs[:, 0], sample)]
    unseen[np.searchsorted(sample, chosen[:, 0]), np.searchsorted(known, chosen[:, 1])] = False
    return float(scores[unseen].std()) if unseen.any() else 0.0
