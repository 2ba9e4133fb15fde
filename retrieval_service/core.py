"""Retrieval without gRPC: validate candidate queries and run them against the release they name."""

from __future__ import annotations

from collections.abc import Sequence

from funnel.limits import MAX_BATCH, MAX_CANDIDATES
from funnel.release.observe import Observe, ignore
from funnel.release.retrieval import Candidates, Query, RetrievalRelease
from funnel.serving import validate
from funnel.serving.manager import ReleaseManager


class Retriever:
    """Validates retrieval requests and runs them against the release they name."""

    def __init__(
        self,
        releases: ReleaseManager[RetrievalRelease],
        max_candidates: int = MAX_CANDIDATES,
        observe: Observe = ignore,
    ) -> None:
        self.releases = releases
        self.max_candidates = max_candidates
        self._observe = observe

    def retrieve(
        self, release_id: str, user_id: str, num_candidates: int, exclude_seen: bool, history: Sequence[int] = ()
    ) -> Candidates:
        return self.retrieve_batch(release_id, [(user_id, num_candidates, exclude_seen, history)])[0]

    def retrieve_batch(
        self, release_id: str, queries: Sequence[tuple[str, int, bool, Sequence[int]]]
    ) -> list[Candidates]:
        """Validate every query (user id, num_candidates, exclude_seen, history), then run them as one batch."""
        validate.count("queries length", len(queries), MAX_BATCH)
        checked = [
            Query(
                validate.user_id(user_id),
                validate.count("num_candidates", n, self.max_candidates),
                exclude_seen,
                validate.history(history),
            )
            for user_id, n, exclude_seen, history in queries
        ]
        return self.releases.get(validate.stage_release_id(release_id)).retrieve_batch(checked, self._observe)
