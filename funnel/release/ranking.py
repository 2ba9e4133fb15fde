"""The ranking half of a release, loaded: the ranker SavedModel that scores users' candidates given their histories."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from funnel.tf import load_serving_signature, string_tensor, tf

import numpy as np

from funnel.limits import MAX_CANDIDATES
from funnel.release.files import (
    Histories,
    IdIndex,
    pad_histories,
    read_popularity,
    read_seen,
)
from funnel.release.observe import Observe, ignore
from funnel.release.store import INDEX_DIR, RANKER_DIR, Manifest

WARMUP_USERS = 4


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Scores:
    release_id: str
    scores: np.ndarray
    ratings: np.ndarray | None  # None when the ranker has no separate rating output


@dataclass(frozen=True)
class RankQuery:
    """One user's candidates to score; an empty ``history`` means the release's stored history."""

    user_id: str
    item_ids: np.ndarray
    history: np.ndarray = field(default_factory=lambda: _EMPTY)


class RankingRelease:
    """One release's ranking half: the scorer, the catalog's item ids it accepts and the users' stored histories."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        self.scorer = load_serving_signature(path / RANKER_DIR)
        self.predicts_rating = "rating" in self.scorer.structured_outputs
        # v2 rankers read each user's history (user_id [B], history [B, L], item_id [B, C]); v1 rankers score
        # (user_id, item_id) pairs and hold the training history in their per-user tables.
        self.reads_history = "history" in self.scorer.structured_input_signature[1]
        self.known_items = IdIndex(np.load(path / INDEX_DIR / "item_ids.npy", allow_pickle=False))
        self.seen: Histories = read_seen(path)
        self._warmup_users = self.seen.users[:WARMUP_USERS].tolist()
        self._warmup_items = read_popularity(path).item_ids[:MAX_CANDIDATES]

    def score(self, user_id: str, item_ids: np.ndarray, history: np.ndarray | None = None) -> Scores:
        """Scores of ``item_ids`` for one user; ``history`` (from the request) replaces the stored history."""
        return self.score_batch([RankQuery(user_id, np.asarray(item_ids), _EMPTY if history is None else history)])[0]

    def score_batch(self, queries: Sequence[RankQuery], observe: Observe = ignore) -> list[Scores]:
        """Scores for many users' candidates with one call of the scorer; ``observe`` hears ranker_seconds."""
        started = time.perf_counter()
        counts = [len(q.item_ids) for q in queries]
        if self.reads_history:
            histories = [q.history if len(q.history) else self.seen.get(q.user_id) for q in queries]
            out = self.scorer(
                user_id=string_tensor([q.user_id for q in queries]),
                history=tf.constant(pad_histories(histories)),
                item_id=tf.constant(pad_histories([q.item_ids for q in queries])),
            )
            scores = [row[:n] for row, n in zip(out["score"].numpy(), counts)]
            ratings = [row[:n] for row, n in zip(out["rating"].numpy(), counts)] if self.predicts_rating else None
        else:
            out = self.scorer(
                user_id=string_tensor(np.repeat(np.array([q.user_id for q in queries], dtype=object), counts)),
                item_id=tf.constant(np.concatenate([q.item_ids for q in queries]), dtype=tf.int64),
            )
            bounds = np.cumsum(counts)[:-1]
            scores = np.split(out["score"].numpy().reshape(-1), bounds)
            ratings = np.split(out["rating"].numpy().reshape(-1), bounds) if self.predicts_rating else None
        observe("ranker_seconds", time.perf_counter() - started)
        return [Scores(self.release_id, s, None if ratings is None else ratings[i]) for i, s in enumerate(scores)]

    def warmup(self) -> None:
        """Score real users against popular items at a few batch sizes before the release is routable."""
        for user_id in [*self._warmup_users, "__funnel_warmup_unknown_user__"]:
            for n in (1, 10, len(self._warmup_items)):
                self.score(user_id, self._warmup_items[:n])
        if self._warmup_users:  # an unknown user with a history
            self.score("__funnel_warmup_unknown_user__", self._warmup_items[:10], self.seen.get(self._warmup_users[0]))
