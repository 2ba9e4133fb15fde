"""Other systems serving the same release, for side-by-side benchmarks: Ray Serve, PyTriton."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def funnel_answers(artifact_root: Path, user_ids: Sequence[str], k: int) -> dict[str, tuple[Any, Any, bool]]:
    """(item ids, scores, cold start) of Funnel's top ``k`` for each user of the stable release, computed in this
    process with the release classes as the gateway does (gateway.core.Gateway._serve): what a peer must answer.
    Loads TensorFlow."""
    from funnel.tf import set_threads

    import numpy as np

    from funnel.limits import DEFAULT_CANDIDATES
    from funnel.release.ranking import RankingRelease, RankQuery
    from funnel.release.retrieval import Query, RetrievalRelease
    from funnel.release.scoring import blend
    from funnel.release.store import ArtifactStore
    from gateway.core import GatewayRelease

    set_threads(1)
    store = ArtifactStore(artifact_root)
    stable = store.rollout().stable
    if stable is None:
        raise RuntimeError(f"expected a stable release in {store.channels_dir}, found the channel unset")
    path, manifest = store.verify(stable)
    retrieval, ranking = RetrievalRelease(path, manifest), RankingRelease(path, manifest)
    weight = GatewayRelease(path, manifest).retrieval_weight
    answers = {}
    for user in user_ids:
        found = retrieval.retrieve_batch([Query(user, max(DEFAULT_CANDIDATES, k), exclude_seen=True)])[0]
        scores = found.scores
        if len(found.item_ids) and not found.cold_start:
            ranked = ranking.score_batch([RankQuery(user, found.item_ids)])[0]
            scores = blend(ranked.scores, found.scores, weight)
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        answers[user] = (found.item_ids[order], np.asarray(scores)[order], found.cold_start)
    return answers
