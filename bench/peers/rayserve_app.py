"""The Ray Serve application of the Ray Serve peer: Retrieval and Ranking deployments behind an HTTP ingress."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from funnel.errors import InvalidArgument
from funnel.limits import DEFAULT_CANDIDATES, MAX_K
from funnel.release.scoring import blend
from funnel.release.store import ArtifactStore, Manifest
from funnel.serving import validate
from gateway.core import GatewayRelease

# Serve's batching, set like Funnel's gateway coalescer (FUNNEL_MAX_BATCH=32, FUNNEL_BATCH_WINDOW_MS=3).
MAX_BATCH_SIZE = 32
BATCH_WAIT_TIMEOUT_S = 0.003
# Serve's default max_ongoing_requests (5) would cap every batch at 5; its batching guide says to raise it above
# max_batch_size.
MAX_ONGOING_REQUESTS = 64
TF_THREADS = 1  # as Funnel's model services (funnel.tf.set_threads)
# Logical CPUs only (nothing is pinned): three replicas must fit the 2 CPUs ray.init is given.
REPLICA_CPUS = 0.5
SHAPE = '{"user_id": str, "k": int}'  # a request body
TF_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _load(artifact_root: str, release_id: str) -> tuple[Path, Manifest]:
    """A release verified end to end, as Funnel's ReleaseManager loads it in each service."""
    return ArtifactStore(artifact_root).verify(release_id)


def _tf_replica() -> None:
    """Select Keras 2 before TensorFlow loads and cap its thread pools, as each Funnel model service does."""
    os.environ.update(TF_ENV)
    from funnel.tf import set_threads

    set_threads(TF_THREADS)


# The two model deployments: one replica each, TensorFlow's environment in the replica.
model_deployment = serve.deployment(
    num_replicas=1,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    ray_actor_options={"num_cpus": REPLICA_CPUS, "runtime_env": {"env_vars": TF_ENV}},
)


def _ready_release(module: str, name: str, artifact_root: str, release_id: str) -> Any:
    """The release half ``module.name`` loaded, verified and warmed in this replica (TensorFlow set up first)."""
    _tf_replica()
    release = getattr(importlib.import_module(module), name)(*_load(artifact_root, release_id))
    release.warmup()
    return release


@model_deployment
class Retrieval:
    """The query tower and ScaNN index of a release (funnel.release.retrieval.RetrievalRelease)."""

    def __init__(self, artifact_root: str, release_id: str) -> None:
        self.release = _ready_release("funnel.release.retrieval", "RetrievalRelease", artifact_root, release_id)
        from funnel.release.retrieval import Query

        self._query = Query

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def retrieve(self, requests: list[tuple[str, int]]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(item ids, scores, cold start) for each (user id, number of candidates)."""
        found = self.release.retrieve_batch([self._query(user, n, exclude_seen=True) for user, n in requests])
        return [(c.item_ids, c.scores, c.cold_start) for c in found]


@model_deployment
class Ranking:
    """The ranker of a release (funnel.release.ranking.RankingRelease)."""

    def __init__(self, artifact_root: str, release_id: str) -> None:
        self.release = _ready_release("funnel.release.ranking", "RankingRelease", artifact_root, release_id)
        from funnel.release.ranking import RankQuery

        self._query = RankQuery

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def rank(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """The ranker's scores of each (user id, candidate item ids)."""
        return [s.scores for s in self.release.score_batch([self._query(user, ids) for user, ids in requests])]


@serve.deployment(
    num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": REPLICA_CPUS}
)
class Recommender:
    """HTTP ingress: POST {"user_id": str, "k": int} → {"items": [{"item_id", "title", "score"}], ...}: retrieval,
    then ranking, blended and cut to k as Funnel's gateway does (gateway.core.Gateway._serve)."""

    def __init__(self, retrieval: DeploymentHandle, ranking: DeploymentHandle, artifact_root: str, release_id: str):
        self.retrieval, self.ranking = retrieval, ranking
        self.release = GatewayRelease(*_load(artifact_root, release_id))

    async def __call__(self, request: Request) -> Any:
        started = time.perf_counter()
        try:
            user_id, k = self._parse(await request.body())
        except InvalidArgument as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        ids, retrieval_scores, cold_start = await self.retrieval.retrieve.remote((user_id, max(DEFAULT_CANDIDATES, k)))
        retrieved = time.perf_counter()
        scores = retrieval_scores  # cold start (popular items) or nothing found: the retrieval order, unranked
        if len(ids) and not cold_start:
            ranked = await self.ranking.rank.remote((user_id, ids))
            scores = blend(ranked, retrieval_scores, self.release.retrieval_weight)
        done = time.perf_counter()
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        catalog = self.release.catalog
        items = []
        for i in order:
            item_id = int(ids[i])
            meta = catalog.get(item_id)
            items.append({"item_id": item_id, "title": meta.title if meta else "", "score": float(scores[i])})
        return {
            "items": items,
            "cold_start": bool(cold_start),
            "retrieval_ms": (retrieved - started) * 1000,
            "ranking_ms": (done - retrieved) * 1000,
            "total_ms": (time.perf_counter() - started) * 1000,
        }

    @staticmethod
    def _parse(raw: bytes) -> tuple[str, int]:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"expected a JSON body {SHAPE}, got {raw[:100]!r}: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidArgument(f"expected a JSON object {SHAPE}, got {type(body).__name__}")
        user_id, k = body.get("user_id"), body.get("k", 10)
        if not isinstance(user_id, str):
            raise InvalidArgument(f"expected user_id to be a string, got {type(user_id).__name__}")
        if not isinstance(k, int) or isinstance(k, bool):
            raise InvalidArgument(f"expected k to be an integer, got {type(k).__name__}")
        return validate.user_id(user_id), validate.count("k", k, MAX_K)


def build(artifact_root: str, release_id: str) -> Any:
    """The application: the ingress bound to handles of the two model deployments."""
    # @serve.deployment made each class a Deployment; mypy ignores class decorators and still sees the class
    retrieval = Retrieval.bind(artifact_root, release_id)  # type: ignore[attr-defined]
    ranking = Ranking.bind(artifact_root, release_id)  # type: ignore[attr-defined]
    return Recommender.bind(retrieval, ranking, artifact_root, release_id)  # type: ignore[attr-defined]
