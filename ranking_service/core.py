"""Ranking without gRPC: validate ranking queries and score them with the release they name."""

from __future__ import annotations

from collections.abc import Sequence

from funnel.limits import MAX_BATCH, MAX_CANDIDATES
from funnel.release.observe import Observe, ignore
from funnel.release.ranking import RankingRelease, RankQuery, Scores
from funnel.serving import validate
from funnel.serving.manager import ReleaseManager


class Ranker:
    """Validates ranking requests and scores them with the release they name."""

    def __init__(
        self, releases: ReleaseManager[RankingRelease], max_items: int = MAX_CANDIDATES, observe: Observe = ignore
    ) -> None:
        self.releases = releases
        self.max_items = max_items
        self._observe = observe

    def rank(self, release_id: str, user_id: str, item_ids: Sequence[int], history: Sequence[int] = ()) -> Scores:
        return self.rank_batch(release_id, [(user_id, item_ids, history)])[0]

    def rank_batch(self, release_id: str, queries: Sequence[tuple[str, Sequence[int], Sequence[int]]]) -> list[Scores]:
        """Validate every query (user id, item ids, history), then score them all in one call."""
        validate.count("queries length", len(queries), MAX_BATCH)
        users = [validate.user_id(user_id) for user_id, _, _ in queries]
        histories = [validate.history(history) for _, _, history in queries]
        release = self.releases.get(validate.stage_release_id(release_id))  # item ids are checked against it
        items = [validate.item_ids(item_ids, self.max_items, release.known_items) for _, item_ids, _ in queries]
        ranked = [RankQuery(*query) for query in zip(users, items, histories, strict=True)]
        return release.score_batch(ranked, self._observe)
