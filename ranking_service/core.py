"""Ranking without gRPC: load a release's ranker SavedModel and score a user's candidate items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel import validate
from funnel.artifacts import IdIndex, read_popularity, read_seen
from funnel.limits import MAX_BATCH, MAX_CANDIDATES
from funnel.release import INDEX_DIR, RANKER_DIR, Manifest
from funnel.serving import ReleaseManager
from funnel.tf import string_tensor, tf

WARMUP_USERS = 4


@dataclass(frozen=True)
class Scores:
    release_id: str
    scores: np.ndarray
    ratings: np.ndarray | None  # None when the ranker has no separate rating output


class RankingRelease:
    """One release's ranking half: the scorer and the catalog's item ids it accepts."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        self.scorer = tf.saved_model.load(str(path / RANKER_DIR)).signatures["serving_default"]
        self.predicts_rating = "rating" in self.scorer.structured_outputs
        self.known_items = IdIndex(np.load(path / INDEX_DIR / "item_ids.npy", allow_pickle=False))
        self._warmup_users = read_seen(path).users()[:WARMUP_USERS]
        self._warmup_items = read_popularity(path).item_ids[:MAX_CANDIDATES]

    def score(self, user_id: str, item_ids: np.ndarray) -> Scores:
        return self.score_batch([(user_id, item_ids)])[0]

    def score_batch(self, queries: Sequence[tuple[str, np.ndarray]]) -> list[Scores]:
        """Scores for many users' candidates with one call of the (pairwise) scorer."""
        counts = [len(items) for _, items in queries]
        out = self.scorer(
            user_id=string_tensor(np.repeat(np.array([user_id for user_id, _ in queries], dtype=object), counts)),
            item_id=tf.constant(np.concatenate([items for _, items in queries]), dtype=tf.int64),
        )
        bounds = np.cumsum(counts)[:-1]
        scores = np.split(out["score"].numpy().reshape(-1), bounds)
        ratings = np.split(out["rating"].numpy().reshape(-1), bounds) if self.predicts_rating else [None] * len(counts)
        return [Scores(self.release_id, s, r) for s, r in zip(scores, ratings)]

    def warmup(self) -> None:
        """Score real users against popular items at a few batch sizes before the release is routable."""
        for user_id in [*self._warmup_users, "__funnel_warmup_unknown_user__"]:
            for n in (1, 10, len(self._warmup_items)):
                self.score(user_id, self._warmup_items[:n])


class Ranker:
    """Validates ranking requests and scores them with the release they name."""

    def __init__(self, releases: ReleaseManager[RankingRelease], max_items: int = MAX_CANDIDATES) -> None:
        self.releases = releases
        self.max_items = max_items

    def rank(self, release_id: str, user_id: str, item_ids: Sequence[int]) -> Scores:
        return self.rank_batch(release_id, [(user_id, item_ids)])[0]

    def rank_batch(self, release_id: str, queries: Sequence[tuple[str, Sequence[int]]]) -> list[Scores]:
        """Validate every query (user id, item ids), then score them all in one call."""
        validate.count("queries length", len(queries), MAX_BATCH)
        for user_id, _ in queries:
            validate.user_id(user_id)
        release = self.releases.get(validate.stage_release_id(release_id))
        return release.score_batch([(user_id, validate.item_ids(items, self.max_items, release.known_items))
                                    for user_id, items in queries])
