"""Build, check and serialize the ScaNN index over candidate-tower item embeddings (numpy API only)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import funnel.tf  # noqa: F401  (selects Keras 2 before scann, TFRS or TensorFlow is imported)

import numpy as np
import scann

from funnel.release.ann import SEARCH_KEY, SearchParams, search

SCANN_DIR = "scann"  # the searcher, inside the release's index/ directory
ITEM_IDS_FILE = "item_ids.npy"
INDEX_JSON = "index.json"
RECALL_K = 100  # index.json key recall_at_100; also the searcher's default number of neighbours


@dataclass(frozen=True)
class IndexConfig:
    """Index settings: the brute-force cut-off, the recall that search tuning aims for, and the recall gate."""

    brute_force_max_items: int = 50_000
    target_recall: float = 0.99
    min_recall: float = 0.95
    recall_queries: int = 1000
    seed: int = 42


class RecallTooLow(RuntimeError):
    """The searcher's recall against exact search is below the configured minimum."""


def build_searcher(database: np.ndarray, config: IndexConfig) -> tuple[scann.scann_ops_pybind.ScannSearcher, str]:
    """A dot-product searcher: brute force for small catalogs, else tree + asymmetric hashing + exact reorder."""
    n = len(database)
    k = min(RECALL_K, n)
    builder = scann.scann_ops_pybind.builder(database, k, "dot_product")
    if n <= config.brute_force_max_items:
        return builder.score_brute_force().build(), "brute_force"
    params = tree_params(n, k)
    searcher = (
        builder.tree(
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.leaves_to_search,
            training_sample_size=min(n, 250_000),
        )
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(params.reorder)
        .build()
    )
    return searcher, "tree_ah"


@dataclass(frozen=True)
class TreeParams:
    num_leaves: int
    leaves_to_search: int
    reorder: int


def tree_params(n: int, k: int = RECALL_K) -> TreeParams:
    """The tree-AH settings for ``n`` items: ~sqrt(n) partitions, search 1/5 of them, rescore the best 10k exactly."""
    num_leaves = max(1, int(math.sqrt(n)))
    return TreeParams(num_leaves, min(num_leaves, max(num_leaves // 5, 20)), 10 * k)


LEAF_FRACTIONS = (0.02, 0.05, 0.1, 0.2)  # of the tree's partitions, searched per query; tried cheapest first
REORDER_FACTORS = (2.0, 4.0, 10.0)  # approximate neighbours rescored exactly, per neighbour asked for


def search_ladder(params: TreeParams) -> list[SearchParams]:
    """Tree-AH search settings from cheapest to dearest; the last is the searcher's built-in one."""
    leaves = sorted(
        {min(params.num_leaves, max(1, math.ceil(f * params.num_leaves))) for f in LEAF_FRACTIONS}
        | {params.leaves_to_search}
    )
    ladder = [SearchParams(n, f) for n in leaves if n <= params.leaves_to_search for f in REORDER_FACTORS]
    return [*ladder[:-1], SearchParams(params.leaves_to_search, params.reorder / RECALL_K)]


def tune_search(
    searcher: scann.scann_ops_pybind.ScannSearcher,
    database: np.ndarray,
    queries: np.ndarray,
    params: TreeParams,
    target: float,
) -> tuple[SearchParams, float]:
    """The first setting of search_ladder(params) whose recall@100 against exact search reaches ``target``
    (else the dearest), with its recall. Deterministic: recall, not timing, decides."""
    k = min(RECALL_K, len(database))
    exact = exact_top_k(database, queries, k)
    for setting in search_ladder(params):
        recall = recall_at_k(search(searcher, queries, k, setting)[0], exact, k)
        print(
            f"[index] leaves_to_search {setting.leaves_to_search}, reorder {setting.reorder_factor:g}×k: "
            f"recall@{k} {recall:.4f}",
            flush=True,
        )
        if recall >= target:
            break
    return setting, recall


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k largest dot products per query (unordered), computed in memory-bounded chunks."""
    k = min(k, len(database))
    chunk = max(1, (1 << 25) // max(len(database), 1))
    rows = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ database.T
        rows.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(rows)


def measure_recall(
    searcher: scann.scann_ops_pybind.ScannSearcher,
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    params: SearchParams | None = None,
) -> float:
    """Mean fraction of the exact top-k that the searcher returns in its top-k when searched with ``params``."""
    k = min(k, len(database))
    return recall_at_k(search(searcher, queries, k, params or SearchParams())[0], exact_top_k(database, queries, k), k)


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of |found ∩ exact| / k (rows of ids or row numbers; -1 in ``found`` never matches)."""
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / k for f, e in zip(found, exact)]))


def build_index(
    directory: Path,
    item_ids: np.ndarray,
    item_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    *,
    candidate_fingerprint: str,
    training_run: str,
    config: IndexConfig = IndexConfig(),
) -> dict:
    """Write scann/, item_ids.npy and index.json under ``directory``; raise RecallTooLow below config.min_recall.

    Row i of the ScaNN database is the embedding of item_ids[i]; recall@k is measured against exact search on
    up to config.recall_queries of the given query embeddings. Returns the index.json contents.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    database = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    if database.ndim != 2 or len(database) != len(item_ids) or not len(item_ids):
        raise ValueError(
            f"expected embeddings of shape ({len(item_ids)}, D) for {len(item_ids)} item ids, got {database.shape}"
        )
    if queries.ndim != 2 or queries.shape[1] != database.shape[1] or not len(queries):
        raise ValueError(f"expected query embeddings of shape (N>0, {database.shape[1]}), got {queries.shape}")
    if len(queries) > config.recall_queries:
        pick = np.random.default_rng(config.seed).choice(len(queries), config.recall_queries, replace=False)
        queries = queries[np.sort(pick)]

    print(f"[index] building ScaNN dot-product index over {len(item_ids)} items (dim {database.shape[1]})", flush=True)
    start = time.monotonic()
    searcher, kind = build_searcher(database, config)
    print(f"[index] {kind} searcher done in {time.monotonic() - start:.1f} s", flush=True)
    if kind == "tree_ah":
        setting, recall = tune_search(searcher, database, queries, tree_params(len(database)), config.target_recall)
    else:
        setting, recall = SearchParams(), measure_recall(searcher, database, queries, RECALL_K)
    print(f"[index] recall@{RECALL_K} vs exact search on {len(queries)} queries: {recall:.4f}", flush=True)
    if recall < config.min_recall:
        raise RecallTooLow(
            f"expected index recall@{RECALL_K} >= {config.min_recall}, got {recall:.4f} ({kind} searcher)"
        )

    directory = Path(directory)
    (directory / SCANN_DIR).mkdir(parents=True)
    searcher.serialize(str(directory / SCANN_DIR), relative_path=True)  # the release dir is renamed after writing
    np.save(directory / ITEM_IDS_FILE, item_ids, allow_pickle=False)
    meta = {
        "candidate_tower_fingerprint": candidate_fingerprint,
        "num_items": len(item_ids),
        "embedding_dim": int(database.shape[1]),
        "distance": "dot_product",
        "searcher": kind,
        "recall_at_100": recall,
        SEARCH_KEY: setting.to_json(),
        "training_run": training_run,
    }
    (directory / INDEX_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta
