"""The gateway without gRPC: choose a release, call retrieval then ranking under it, degrade when a stage fails."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from funnel.errors import FailedPrecondition, FunnelError, InvalidArgument, Unavailable
from funnel.limits import DEFAULT_CANDIDATES, MAX_CANDIDATES, MAX_K
from funnel.release.files import CatalogItem, Histories, Popularity, read_catalog, read_popularity, read_seen
from funnel.release.scoring import blend, retrieval_weight
from funnel.release.store import Manifest
from funnel.serving import validate
from funnel.serving.manager import ReleaseManager

log = logging.getLogger(__name__)


class StageUnavailable(Exception):
    """A stage did not answer in time or at all; the gateway degrades instead of failing."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage} unavailable: {reason}")
        self.stage = stage


@dataclass(frozen=True)
class StageCandidates:
    release_id: str
    item_ids: np.ndarray
    scores: np.ndarray
    cold_start: bool


@dataclass(frozen=True)
class StageScores:
    release_id: str
    scores: np.ndarray
    ratings: np.ndarray | None  # predicted ratings, when the ranker gives them


class RetrievalStage(Protocol):
    def retrieve(
        self,
        release_id: str,
        user_id: str,
        num_candidates: int,
        exclude_seen: bool,
        timeout: float,
        history: np.ndarray,
    ) -> StageCandidates: ...


class RankingStage(Protocol):
    def rank(
        self, release_id: str, user_id: str, item_ids: np.ndarray, timeout: float, history: np.ndarray
    ) -> StageScores: ...


class GatewayRelease:
    """What the gateway needs of a release: titles, the popularity fallback and seen items for exclusion."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        self.catalog: dict[int, CatalogItem] = read_catalog(path)
        self.popularity: Popularity = read_popularity(path)
        self.seen: Histories = read_seen(path)
        self.retrieval_weight = retrieval_weight(manifest.config)  # the served order's blend (funnel.release.scoring)

    def warmup(self) -> None:
        """Nothing to warm: the gateway holds no model."""


@dataclass(frozen=True)
class RecommendedItem:
    item_id: int
    title: str
    score: float
    retrieval_score: float
    year: int
    genres: tuple[str, ...]
    predicted_rating: float = 0.0


@dataclass
class Recommendation:
    release_id: str
    items: list[RecommendedItem]
    retrieval_release_id: str = ""
    ranking_release_id: str = ""
    retrieval_ms: float = 0.0
    ranking_ms: float = 0.0
    total_ms: float = 0.0
    degraded_reasons: list[str] = field(default_factory=list)
    cold_start: bool = False


def traffic_bucket(user_id: str, salt: str) -> float:
    """A user's stable position in [0, 1) for one rollout (salted by the candidate id: each rollout samples anew)."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class StageReadiness:
    """Which releases each replica of each stage holds ready (from its GetStatus). A candidate gets traffic, and may
    be promoted, only when every known replica of every stage holds it ready.

    A replica that stops answering (killed, partitioned, restarting) or is not serving yet keeps the readiness it
    last reported: it takes no traffic meanwhile, so routing by its last word keeps candidate users on the
    candidate through a stage outage (they degrade like everyone else) instead of moving them to stable and back.
    A replica not heard from yet is not counted; one whose address no longer resolves is forgotten.
    """

    def __init__(self, stages: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._replicas: dict[str, dict[str, frozenset[str]]] = {stage: {} for stage in stages}
        self._answered: set[str] = set()
        self._everywhere: frozenset[str] = frozenset()  # ready on every known replica of every stage

    def update(self, stage: str, replicas: Mapping[str, Iterable[str] | None]) -> None:
        """A stage's latest probe: each replica's address → the release ids it holds ready, or None if it did not
        answer or is not serving."""
        with self._lock:
            known = self._replicas[stage]
            view = {
                address: known[address] if ready is None else frozenset(ready)
                for address, ready in replicas.items()
                if ready is not None or address in known
            }
            self._replicas[stage] = view
            if any(ready is not None for ready in replicas.values()):
                self._answered.add(stage)
            ready_sets = [ready for replicas in self._replicas.values() for ready in replicas.values()]
            every_stage = all(self._replicas.values())
            self._everywhere = frozenset.intersection(*ready_sets) if ready_sets and every_stage else frozenset()

    def ready_everywhere(self, release_id: str) -> bool:
        """True when every known replica of every stage holds ``release_id`` ready (the request path's check: the
        answer is kept from the last probe, not recomputed per request)."""
        return release_id in self._everywhere

    def all_answered_once(self) -> bool:
        """True once a replica of every stage has answered a probe: the gateway's connections are up (part of its
        warm-up)."""
        with self._lock:
            return self._answered >= set(self._replicas)

    def missing(self, release_id: str) -> list[str]:
        """Where ``release_id`` is not (yet) ready: each known replica without it, or a stage with none known."""
        with self._lock:
            missing = []
            for stage, replicas in self._replicas.items():
                if not replicas:
                    missing.append(f"{stage} (no replica answers)")
                missing += [f"{stage} replica {a}" for a, ready in sorted(replicas.items()) if release_id not in ready]
            return missing


class Router:
    """Chooses the releases for a request, in order: the pinned one alone, or the rollout policy's choice first.

    A user whose bucket falls under the candidate fraction gets the candidate, everyone else stable; the other
    one (when servable) follows as the fallback for a stage that answers FAILED_PRECONDITION mid-flip.
    """

    def __init__(self, releases: ReleaseManager[GatewayRelease], readiness: StageReadiness | None = None) -> None:
        self.releases = releases
        self.readiness = readiness

    def choose(self, pinned: str, user_id: str) -> list[GatewayRelease]:
        if pinned:
            return [self.releases.get(pinned)]
        stable = self.releases.channel("stable")
        if stable is None:
            raise Unavailable("no stable release is loaded yet")
        order = [stable]
        candidate = self.releases.channel("candidate")
        if candidate is not None and candidate != stable and self._stages_ready(candidate):
            if traffic_bucket(user_id, candidate) < self.releases.candidate_fraction():
                order.insert(0, candidate)
            else:
                order.append(candidate)
        chosen = []
        for release_id in order:
            try:
                chosen.append(self.releases.get(release_id))
            except FunnelError:  # dropped by a concurrent refresh
                continue
        if not chosen:
            raise Unavailable("the releases the rollout names are being swapped; retry")
        return chosen

    def _stages_ready(self, release_id: str) -> bool:
        return self.readiness is None or self.readiness.ready_everywhere(release_id)


@dataclass(frozen=True)
class Deadlines:
    """Per-stage caps; each stage gets the smaller of its cap and what is left of the caller's deadline."""

    retrieval: float = 1.0
    ranking: float = 1.0

    def cap(self, stage_cap: float, remaining: float | None) -> float:
        return stage_cap if remaining is None else min(stage_cap, remaining)


class Gateway:
    """Serves Recommend: retrieval → ranking → top k, all under one release, with titles attached."""

    def __init__(
        self, router: Router, retrieval: RetrievalStage, ranking: RankingStage, deadlines: Deadlines = Deadlines()
    ) -> None:
        self.router, self.retrieval, self.ranking, self.deadlines = router, retrieval, ranking, deadlines

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        release_id: str = "",
        exclude_seen: bool = True,
        num_candidates: int = 0,
        time_remaining: float | None = None,
        history: Sequence[int] = (),
    ) -> Recommendation:
        started = time.perf_counter()
        validate.user_id(user_id)
        history_ids = validate.history(history)
        validate.count("k", k, MAX_K)
        num_candidates = num_candidates or max(DEFAULT_CANDIDATES, k)
        validate.count("num_candidates", num_candidates, MAX_CANDIDATES)
        if num_candidates < k:
            raise InvalidArgument(f"num_candidates must be at least k ({k}), got {num_candidates}")
        releases = self.router.choose(release_id, user_id)
        for attempt, release in enumerate(releases, 1):
            try:
                return self._serve(
                    release, user_id, history_ids, k, exclude_seen, num_candidates, started, time_remaining
                )
            except FailedPrecondition as exc:
                if attempt == len(releases):
                    raise
                log.info(
                    "release %s not servable (%s); serving the request with %s instead",
                    release.release_id,
                    exc,
                    releases[attempt].release_id,
                )
        raise AssertionError("unreachable: the router returns at least one release")

    def _serve(
        self,
        release: GatewayRelease,
        user_id: str,
        history: np.ndarray,
        k: int,
        exclude_seen: bool,
        num_candidates: int,
        started: float,
        time_remaining: float | None,
    ) -> Recommendation:
        """Retrieval then ranking, both under ``release``; a stage that is down degrades instead of failing."""
        result = Recommendation(release.release_id, [])

        def remaining() -> float | None:
            return None if time_remaining is None else time_remaining - (time.perf_counter() - started)

        t0 = time.perf_counter()
        try:
            found = self.retrieval.retrieve(
                release.release_id,
                user_id,
                num_candidates,
                exclude_seen,
                self.deadlines.cap(self.deadlines.retrieval, remaining()),
                history,
            )
            self._check_release("retrieval", release.release_id, found.release_id)
            result.retrieval_release_id, result.cold_start = found.release_id, found.cold_start
            ids, retrieval_scores = found.item_ids, found.scores
        except StageUnavailable as exc:
            result.degraded_reasons.append(str(exc))
            seen = history if len(history) else release.seen.get(user_id)
            result.cold_start = not any(int(item) in release.catalog for item in seen)
            ids, retrieval_scores = release.popularity.top(num_candidates, seen if exclude_seen else None)
        result.retrieval_ms = (time.perf_counter() - t0) * 1000

        scores, ratings = retrieval_scores, None
        if len(ids) and not result.degraded_reasons and not result.cold_start:
            t1 = time.perf_counter()
            try:
                ranked = self.ranking.rank(
                    release.release_id, user_id, ids, self.deadlines.cap(self.deadlines.ranking, remaining()), history
                )
                self._check_release("ranking", release.release_id, ranked.release_id)
                result.ranking_release_id, ratings = ranked.release_id, ranked.ratings
                scores = blend(ranked.scores, retrieval_scores, release.retrieval_weight)
            except StageUnavailable as exc:
                result.degraded_reasons.append(str(exc))
                scores = retrieval_scores
            result.ranking_ms = (time.perf_counter() - t1) * 1000

        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        result.items = [
            self._item(
                release,
                int(ids[i]),
                float(scores[i]),
                float(retrieval_scores[i]),
                float(ratings[i]) if ratings is not None else 0.0,
            )
            for i in order
        ]
        result.total_ms = (time.perf_counter() - started) * 1000
        return result

    @staticmethod
    def _check_release(stage: str, wanted: str, served: str) -> None:
        if served != wanted:
            raise FunnelError(f"{stage} answered for release {served!r} but was asked for {wanted!r}")

    @staticmethod
    def _item(
        release: GatewayRelease, item_id: int, score: float, retrieval_score: float, rating: float
    ) -> RecommendedItem:
        meta = release.catalog.get(item_id)
        if meta is None:
            return RecommendedItem(item_id, "", score, retrieval_score, 0, (), rating)
        return RecommendedItem(item_id, meta.title, score, retrieval_score, meta.year, meta.genres, rating)
