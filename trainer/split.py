"""The reference train/test split of the TFRS tutorials, as index arrays over interactions in file order."""

from __future__ import annotations

import numpy as np

from funnel.tf import tf

SHUFFLE_BUFFER = 100_000


def seeds_split(n: int, seed: int = 42, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx) int64 arrays: a seeded shuffle of range(n), the first train_fraction is train."""
    if n < 2:
        raise ValueError(f"expected at least 2 interactions to split, got {n}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"expected train_fraction strictly between 0 and 1, got {train_fraction}")
    tf.random.set_seed(seed)
    shuffled = tf.data.Dataset.range(n).shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
    order = next(iter(shuffled.batch(n))).numpy().astype(np.int64)
    num_train = int(n * train_fraction)
    return order[:num_train], order[num_train:]
