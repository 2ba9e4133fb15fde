"""The retrieval half of a release, loaded: query tower, ScaNN searcher, stored histories and the popularity list."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from funnel.tf import load_serving_signature, string_tensor, tf

import numpy as np

from funnel.errors import ReleaseError
from funnel.release.ann import SearchParams, search
from funnel.release.files import (
    Histories,
    IdIndex,
    Popularity,
    pad_histories,
    read_popularity,
    read_seen,
)
from funnel.release.observe import Observe, ignore
from funnel.release.store import INDEX_DIR, QUERY_TOWER_DIR, SIDECAR, Manifest

WARMUP_USERS = 8


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Query:
    """One user's retrieval query; an empty ``history`` means the release's stored history."""

    user_id: str
    num_candidates: int
    exclude_seen: bool = True
    history: np.ndarray = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class Candidates:
    release_id: str
    item_ids: np.ndarray
    scores: np.ndarray
    cold_start: bool


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: unreadable metadata: {exc}") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def embed_queries(
    query_tower: Callable[..., dict[str, tf.Tensor]],
    reads_history: bool,
    user_ids: Sequence[str],
    histories: Sequence[np.ndarray],
) -> np.ndarray:
    """[len(user_ids), D] query embeddings from one call of an exported query tower's serving signature."""
    inputs = {"user_id": string_tensor(user_ids)}
    if reads_history:
        inputs["history"] = tf.constant(pad_histories(histories))
    return np.asarray(query_tower(**inputs)["embedding"].numpy())


class RetrievalRelease:
    """One release's retrieval half: query tower, ScaNN searcher over item embeddings, seen items, popularity."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        tower_meta = _read_json(path / QUERY_TOWER_DIR / SIDECAR)
        index_meta = _read_json(path / INDEX_DIR / "index.json")
        tower_fp, index_fp = (
            tower_meta.get("candidate_tower_fingerprint"),
            index_meta.get("candidate_tower_fingerprint"),
        )
        if not tower_fp or tower_fp != index_fp:
            raise ReleaseError(
                f"release {self.release_id}: query tower expects candidate tower {tower_fp!r} but the index was "
                f"built from {index_fp!r}; a tower and an index from different runs cannot serve together"
            )
        scann_dir = path / INDEX_DIR / "scann"
        if (scann_dir / "scann_docids.pkl").exists():
            raise ReleaseError(f"release {self.release_id}: pickled ScaNN docids are not accepted")
        import scann  # imports TensorFlow: funnel.tf (imported above) has selected Keras 2 already

        self.searcher = scann.scann_ops_pybind.load_searcher(str(scann_dir), assets_backcompat_shim=False)
        self.search_params = SearchParams.from_index_meta(index_meta)
        self.item_ids = np.load(path / INDEX_DIR / "item_ids.npy", allow_pickle=False).astype(np.int64)
        if len(self.item_ids) != index_meta.get("num_items"):
            raise ReleaseError(
                f"release {self.release_id}: index.json says {index_meta.get('num_items')} items, "
                f"item_ids.npy holds {len(self.item_ids)}"
            )
        self._rows = IdIndex(self.item_ids)
        self.query_tower = load_serving_signature(path / QUERY_TOWER_DIR)
        # v2 towers read the user's history (user_id, history); v1 towers read only the user id.
        self.reads_history = "history" in self.query_tower.structured_input_signature[1]
        self.seen: Histories = read_seen(path)
        self.popularity: Popularity = read_popularity(path)

    def embed(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        return embed_queries(self.query_tower, self.reads_history, user_ids, histories)

    def retrieve(
        self, user_id: str, num_candidates: int, exclude_seen: bool, history: np.ndarray | None = None
    ) -> Candidates:
        """Top candidates for one user; ``history`` (from the request) replaces the release's stored history."""
        query = Query(user_id, num_candidates, exclude_seen, _EMPTY if history is None else history)
        return self.retrieve_batch([query])[0]

    def retrieve_batch(self, queries: Sequence[Query], observe: Observe = ignore) -> list[Candidates]:
        """Candidates for many users with one query-tower call and one ScaNN ``search_batched``; ``observe`` hears
        query_tower_seconds, ann_search_seconds and excluded_seen (candidates dropped as seen)."""
        results: dict[int, Candidates] = {}
        warm: list[int] = []
        histories: list[np.ndarray] = []
        seen: list[np.ndarray] = []
        for i, query in enumerate(queries):
            history = query.history if len(query.history) else self.seen.get(query.user_id)
            excluded = history if query.exclude_seen else history[:0]
            if self._cold(query.user_id, history):
                ids, scores = self.popularity.top(query.num_candidates, excluded)
                results[i] = Candidates(self.release_id, ids, scores, cold_start=True)
            else:
                warm.append(i)
                histories.append(history)
                seen.append(excluded)
        if warm:
            k = min(max(queries[i].num_candidates + len(s) for i, s in zip(warm, seen)), len(self.item_ids))
            started = time.perf_counter()
            embedded = self.embed([queries[i].user_id for i in warm], histories)
            embedded_at = time.perf_counter()
            rows, scores = search(self.searcher, embedded, k, self.search_params)
            observe("query_tower_seconds", embedded_at - started)
            observe("ann_search_seconds", time.perf_counter() - embedded_at)
            keep = self._unseen(rows, seen)
            observe("excluded_seen", int(((rows >= 0) & ~keep).sum()))
            ids, scores = self.item_ids[rows], scores.astype(np.float32)
            for row, i in enumerate(warm):
                n, mask = queries[i].num_candidates, keep[row]
                results[i] = Candidates(self.release_id, ids[row][mask][:n], scores[row][mask][:n], False)
        return [results[i] for i in range(len(queries))]

    def _cold(self, user_id: str, history: np.ndarray) -> bool:
        """A history-reading tower needs at least one history item in the index (the user id alone says nothing);
        a v1 tower needs a user it was trained on."""
        if self.reads_history:
            return not (self._rows.rows(history) >= 0).any()
        return user_id not in self.seen

    def _unseen(self, rows: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
        """bool [len(seen), k]: which found rows (index rows, -1 for none) are real and not in that query's seen
        items; one membership test for the whole batch, on (query, row) keys."""
        seen_ids = np.concatenate(seen) if seen else _EMPTY
        owner = np.repeat(np.arange(len(seen), dtype=np.int64), [len(s) for s in seen])
        seen_rows = self._rows.rows(seen_ids)
        known = seen_rows >= 0  # seen ids outside the index cannot be found anyway
        n = len(self.item_ids)
        seen_keys = np.sort(owner[known] * n + seen_rows[known])
        found_keys = np.arange(len(rows), dtype=np.int64)[:, None] * n + rows
        if not len(seen_keys):
            return rows >= 0
        hit = seen_keys[np.minimum(np.searchsorted(seen_keys, found_keys), len(seen_keys) - 1)] == found_keys
        unseen: np.ndarray = (rows >= 0) & ~hit
        return unseen

    def warmup(self) -> None:
        """Run real queries (known users, an unknown user) so the first request pays no tracing cost."""
        users = self.seen.users[:WARMUP_USERS].tolist()
        for user_id in users:
            self.retrieve(user_id, 10, exclude_seen=True)
        self.retrieve("__funnel_warmup_unknown_user__", 10, exclude_seen=True)
        if users:
            self.retrieve("__funnel_warmup_unknown_user__", 10, exclude_seen=True, history=self.seen.get(users[0]))
