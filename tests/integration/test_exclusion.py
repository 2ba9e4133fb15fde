"""Every MovieLens 100K user, every rating: a release the trainer CLI publishes never recommends what was rated."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from funnel.data.loaders import load_dataset
from funnel.release.retrieval import Query, RetrievalRelease
from funnel.release.store import ArtifactStore
from tests.helpers import CACHE_DIR, ROOT, trainer_command

pytestmark = pytest.mark.slow  # trains a release of all of MovieLens 100K (the trainer CLI, TensorFlow)


def test_no_movielens_user_is_offered_a_film_they_rated(tmp_path: Path) -> None:
    """All 943 users and 100,000 ratings, the held-out fifth included (one epoch each: exclusion, not quality)."""
    root = tmp_path / "store"
    subprocess.run(
        trainer_command(root, "--epochs", "1", "--no-refit", "--release-id", "all"),
        cwd=ROOT,
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    release = RetrievalRelease(*ArtifactStore(root).verify("all"))
    data = load_dataset("movielens-100k", CACHE_DIR).interactions
    users = np.unique(data.user_ids)
    assert len(users) == 943 and len(release.seen) == 943
    found = []
    for start in range(0, len(users), 128):
        found += release.retrieve_batch([Query(str(u), 100, exclude_seen=True) for u in users[start : start + 128]])
    offered = 0
    for user, candidates in zip(users, found, strict=True):
        rated = set(data.item_ids[data.user_ids == user].tolist())
        assert not candidates.cold_start and len(candidates.item_ids) == 100
        assert not rated & set(candidates.item_ids.tolist()), user
        offered += len(candidates.item_ids)
    assert offered == 94_300
