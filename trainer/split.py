"""Train/test splits as index arrays over interactions in file order: the tutorials' shuffle, by time, or to tune."""

from __future__ import annotations

import numpy as np

from funnel.data import Interactions
from funnel.tf import tf

SHUFFLE_BUFFER = 100_000
SPLITS = ("seeds", "temporal", "validation")
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
    """(train_idx, test_idx) of split ``name``: "seeds" (the seeded shuffle), "temporal" (train on the past) or
    "validation" (the seeds split's training part, cut again to tune on)."""
    if name == "seeds":
        return seeds_split(len(interactions), seed=seed)
    if name == "validation":
        return validation_split(len(interactions), seed=seed)
    if name == "temporal":
        return temporal_split(interactions.timestamps)
    raise ValueError(f"expected a split in {SPLITS}, got {name!r}")
