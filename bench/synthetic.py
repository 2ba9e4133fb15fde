"""A generated interaction dataset with planted structure, as funnel.data dataclasses, deterministic by seed.

Items and users fall into latent clusters; a user mostly interacts with items of their own cluster (the rest is
drawn from global popularity); item popularity follows a power law (Zipf) both globally and inside each cluster;
user activity is heavy-tailed. Ratings are 1..5 from item quality, user bias and cluster affinity plus noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.data.loaders import GROUPLENS_GENRES, Dataset, Interactions, Items

GENRES = GROUPLENS_GENRES[1:]  # "unknown" left out
START_TIME = 1_600_000_000  # unix seconds of the first interaction


@dataclass(frozen=True)
class SyntheticConfig:
    items: int = 20_000
    users: int = 5_000
    interactions_per_user: float = 20.0  # mean draws per user before duplicates are dropped; at least min_per_user
    min_per_user: int = 3
    clusters: int = 50
    in_cluster: float = 0.8  # share of a user's interactions drawn from their own cluster
    zipf: float = 1.0  # popularity exponent: weight of the r-th most popular item ~ r ** -zipf
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("items", "users", "clusters", "min_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.interactions_per_user < self.min_per_user:
            raise ValueError(f"expected interactions_per_user >= min_per_user, got {self.interactions_per_user}")
        if not 0.0 <= self.in_cluster <= 1.0 or self.zipf < 0:
            raise ValueError(f"expected 0 <= in_cluster <= 1 and zipf >= 0, got {self.in_cluster}, {self.zipf}")

    @property
    def name(self) -> str:
        return f"synthetic-{self.items}i-{self.users}u-{self.interactions_per_user:g}ipu-s{self.seed}"


def _draw(rng: np.random.Generator, cumulative: np.ndarray, n: int) -> np.ndarray:
    """``n`` positions drawn with probabilities given by an increasing cumulative weight array."""
    return np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right").clip(max=len(cumulative) - 1)


def generate(config: SyntheticConfig = SyntheticConfig()) -> Dataset:
    """The dataset: item ids 1..items titled "Item <id>", user ids "1".."users", interactions in shuffled order."""
    return generate_with_clusters(config)[0]


def generate_with_clusters(config: SyntheticConfig = SyntheticConfig()) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The dataset, the planted cluster of each item (by item row) and of each user (user id "u" is row u - 1)."""
    rng = np.random.default_rng(config.seed)
    n_items, n_users, n_clusters = config.items, config.users, min(config.clusters, config.items)

    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    item_cluster = rng.integers(0, n_clusters, n_items)
    rank = rng.permutation(n_items) + 1  # popularity rank of each item
    weight = rank.astype(np.float64) ** -config.zipf
    quality = rng.normal(0.0, 0.6, n_items)
    years = rng.integers(1950, 2025, n_items).astype(np.int32)
    cluster_genre = rng.integers(0, len(GENRES), n_clusters)
    second = rng.integers(0, len(GENRES), n_items)
    has_second = rng.random(n_items) < 0.4
    genres = tuple(
        (GENRES[g],) if not two or s == g else (GENRES[g], GENRES[s])
        for g, s, two in zip(cluster_genre[item_cluster].tolist(), second.tolist(), has_second.tolist())
    )
    items = Items(item_ids, tuple(f"Item {i}" for i in item_ids.tolist()), years, genres)

    # Per-cluster item lists with cumulative popularity weights, and the global cumulative weights.
    by_cluster = np.argsort(item_cluster, kind="stable")
    bounds = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters + 1))
    global_cum = np.cumsum(weight)

    user_cluster = rng.integers(0, n_clusters, n_users)
    user_bias = rng.normal(0.0, 0.4, n_users)
    extra = config.interactions_per_user - config.min_per_user
    counts = config.min_per_user + (rng.pareto(3.0, n_users) * extra * 2.0).astype(np.int64)  # mean ≈ extra
    counts = np.minimum(counts, n_items)
    user_rows = np.repeat(np.arange(n_users), counts)
    total = len(user_rows)

    own = rng.random(total) < config.in_cluster
    chosen = np.empty(total, dtype=np.int64)
    chosen[~own] = _draw(rng, global_cum, int((~own).sum()))
    own_rows = np.flatnonzero(own)
    clusters_of = user_cluster[user_rows[own_rows]]
    for c in range(n_clusters):
        rows = own_rows[clusters_of == c]
        members = by_cluster[bounds[c] : bounds[c + 1]]
        if not len(rows):
            continue
        if not len(members):  # an empty cluster: fall back to global popularity
            chosen[rows] = _draw(rng, global_cum, len(rows))
            continue
        chosen[rows] = members[_draw(rng, np.cumsum(weight[members]), len(rows))]

    # One interaction per (user, item): keep the first occurrence.
    _, first = np.unique(user_rows * np.int64(n_items) + chosen, return_index=True)
    keep = np.sort(first)
    user_rows, chosen = user_rows[keep], chosen[keep]
    n = len(keep)

    affinity = (item_cluster[chosen] == user_cluster[user_rows]).astype(np.float64)
    raw = 3.0 + quality[chosen] + user_bias[user_rows] + 0.5 * affinity + rng.normal(0.0, 0.5, n)
    ratings = np.clip(np.rint(raw), 1, 5).astype(np.float32)
    timestamps = START_TIME + np.sort(rng.integers(0, 365 * 86400, n)).astype(np.int64)
    order = rng.permutation(n)  # file order: shuffled like a ratings log, timestamps assigned in that order
    user_rows, chosen, ratings = user_rows[order], chosen[order], ratings[order]
    user_ids = (user_rows + 1).astype(str).astype(np.str_)
    interactions = Interactions(user_ids, item_ids[chosen], ratings, timestamps)
    return Dataset(config.name, interactions, items, None), item_cluster, user_cluster
