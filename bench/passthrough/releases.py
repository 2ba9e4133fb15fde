"""The pass-through stage releases: precomputed candidates and scores in place of the models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from funnel.limits import MAX_CANDIDATES
from funnel.release.files import IdIndex, read_popularity
from funnel.release.observe import Observe, ignore
from funnel.release.ranking import RankingRelease, RankQuery, Scores
from funnel.release.retrieval import Candidates, Query, RetrievalRelease
from funnel.release.store import INDEX_DIR, Manifest


def _canned(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The release's most popular items with falling scores: real catalog ids, so the gateway's work is real."""
    items = read_popularity(path).item_ids[:MAX_CANDIDATES].astype(np.int64)
    return items, np.linspace(1.0, 0.0, len(items), dtype=np.float32)


class PassthroughRetrieval(RetrievalRelease):
    """Answers every query with the same candidates (no query tower, no ANN search)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:  # nothing of the parent's is loaded
        self.release_id = manifest.release_id
        self._items, self._scores = _canned(path)

    def retrieve_batch(self, queries: Sequence[Query], observe: Observe = ignore) -> list[Candidates]:
        return [
            Candidates(self.release_id, self._items[: q.num_candidates], self._scores[: q.num_candidates], False)
            for q in queries
        ]

    def warmup(self) -> None:
        pass


class PassthroughRanking(RankingRelease):
    """Answers every query with precomputed scores (no ranker call); item ids are checked as the real one's are."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        self.known_items = IdIndex(np.load(path / INDEX_DIR / "item_ids.npy", allow_pickle=False))
        self._scores = np.linspace(0.0, 1.0, MAX_CANDIDATES, dtype=np.float32)

    def score_batch(self, queries: Sequence[RankQuery], observe: Observe = ignore) -> list[Scores]:
        return [Scores(self.release_id, self._scores[: len(q.item_ids)], None) for q in queries]

    def warmup(self) -> None:
        pass
