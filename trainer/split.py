"""Train/test splits as index arrays over interactions in file order: the tutorials' shuffle, by time, or to tune."""

from __future__ import annotations

from funnel.tf import tf

import numpy as np

from funnel.data.loaders import Interactions

SHUFFLE_BUFFER = 100_000
SPLITS = ("recent", "seeds", "temporal", "validation")
RECENT_FRACTION = 0.2  # of each user's interactions, the most recent held out
VALIDATION_FRACTION = 0.1  # of the seeds split's training part
VALIDATION_SEED = 0


def _check(n: int, train_fraction: float) -> None:
    if n < 2:
        raise ValueError(f"expected at least 2 interactions to split, got {n}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"expected train_fraction strictly between 0 and 1, got {train_fraction}")


def seeds_split(n: int, seed: int = 42, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx) int64 arrays: a seeded shuffle of range(n), the first train_fraction is train."""
    _check(n, train_fraction)
    tf.random.set_seed(seed)
    shuffled = tf.data.Dataset.range(n).shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
    order = next(iter(shuffled.batch(n))).numpy().astype(np.int64)
    num_train = int(n * train_fraction)
    return order[:num_train], order[num_train:]


def temporal_split(timestamps: np.ndarray, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx) int64 arrays, both in time order: the earliest train_fraction is train.

    One global cut at the train_fraction quantile of the timestamps; interactions with equal timestamps keep file
    order, so a tie at the cut goes to train for the rows that come first in the file.
    """
    timestamps = np.asarray(timestamps)
    _check(len(timestamps), train_fraction)
    order = np.argsort(timestamps, kind="stable").astype(np.int64)
    num_train = int(len(order) * train_fraction)
    return order[:num_train], order[num_train:]


def recent_split(
    user_ids: np.ndarray, timestamps: np.ndarray, fraction: float = RECENT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx) int64 arrays, each in file order: every user's most recent ``fraction`` of their
    interactions (rounded down, so a user with fewer than 1 / fraction interactions keeps all of them in train) is
    held out. Equal timestamps keep file order, so of a tie at a user's cut the rows that come later are held out.

    What a deployed recommender is judged on: what each known user does next, given everything before it.
    """
    users, timestamps = np.asarray(user_ids), np.asarray(timestamps)
    if users.shape != timestamps.shape or users.ndim != 1:
        raise ValueError(
            f"expected user id and timestamp columns of equal length, got {users.shape} and {timestamps.shape}"
        )
    _check(len(users), 1.0 - fraction)
    _, user_rows = np.unique(users, return_inverse=True)
    order = np.lexsort((np.arange(len(users)), timestamps, user_rows))  # by user, then time, then file order
    counts = np.bincount(user_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)  # each interaction's place in its user's time order
    rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    held = rank >= counts[user_rows] - (counts[user_rows] * fraction).astype(np.int64)
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def validation_split(n: int, seed: int = 42, fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Return (fit_idx, validation_idx) int64 arrays: the seeds split's training part cut again, a seeded
    ``fraction`` of it (VALIDATION_SEED) held out to tune on, both in the training part's order. The seeds split's
    test part is in neither."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected fraction strictly between 0 and 1, got {fraction}")
    train, _ = seeds_split(n, seed=seed)
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
    held = int(len(train) * fraction)
    return train[np.sort(order[held:])], train[np.sort(order[:held])]


def make_split(name: str, interactions: Interactions, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) of split ``name``: "recent" (each user's most recent interactions held out), "seeds" (the
    seeded shuffle), "temporal" (one global time cut) or "validation" (the seeds split's training part, cut again to
    tune on)."""
    if name == "recent":
        return recent_split(interactions.user_ids, interactions.timestamps)
    if name == "seeds":
        return seeds_split(len(interactions), seed=seed)
    if name == "validation":
        return validation_split(len(interactions), seed=seed)
    if name == "temporal":
        return temporal_split(interactions.timestamps)
    raise ValueError(f"expected a split in {SPLITS}, got {name!r}")
