"""In-process TFRS serving of a release's own models, and the served index's recall against exact search.

``python -m bench.inprocess --release-dir DIR --users-file F --concurrency 16 --duration 20`` loads the release's
query tower, candidate tower and ranker SavedModels into this one Python process, embeds the catalog with the
candidate tower, indexes it in ``tfrs.layers.factorized_top_k.BruteForce`` and in the TFRS ``ScaNN`` layer, and
serves each request the way Funnel does: the query tower on the user's id and stored history, the top
``num_candidates + |seen|`` from the layer, the user's seen items dropped, the first ``num_candidates`` scored by
the ranker, the best ``k`` returned. Client threads in this same process drive it closed-loop for a fixed time.
It then measures recall@100 of the release's serialized ScaNN index (what retrieval_service serves) against exact
numpy search, and prints the result as one JSON line. With ``--serve-rounds`` it then stays up, models loaded:
each line written to its stdin (seconds) measures both layers again and prints another JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from funnel.tf import tf

import numpy as np
import scann
import tensorflow_recommenders as tfrs

from bench.loadgen import LoadResult, closed_loop, merge
from bench.run import sample_users
from funnel.release.ann import SearchParams, search
from funnel.release.files import Histories, pad_histories, read_seen
from funnel.release.retrieval import embed_queries
from funnel.release.store import CANDIDATE_TOWER_DIR, INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR
from trainer.evaluate import Signature, load_signature, run_batched
from trainer.index import INDEX_JSON, SCANN_DIR, exact_top_k, recall_at_k, tree_params

RECALL_K = 100
EMBED_BATCH = 8192


class TopKLayer(Protocol):
    """A TFRS top-k layer with its candidates indexed (BruteForce, ScaNN): (scores, item ids) [queries, k]."""

    def __call__(self, queries: Any, k: int | None = None) -> tuple[Any, Any]: ...


@dataclass
class Models:
    query_tower: Signature
    candidate_tower: Signature
    ranker: Signature
    item_ids: np.ndarray  # the index's items, in index row order
    seen: Histories
    reads_history: bool
    ranker_inputs: tuple[str, ...]


def load_models(release_dir: Path) -> Models:
    query_tower = load_signature(release_dir, QUERY_TOWER_DIR)
    ranker = load_signature(release_dir, RANKER_DIR)
    return Models(
        query_tower=query_tower,
        candidate_tower=load_signature(release_dir, CANDIDATE_TOWER_DIR),
        ranker=ranker,
        item_ids=np.load(release_dir / INDEX_DIR / "item_ids.npy", allow_pickle=False).astype(np.int64),
        seen=read_seen(release_dir),
        reads_history="history" in query_tower.structured_input_signature[1],
        ranker_inputs=tuple(sorted(ranker.structured_input_signature[1])),
    )


def embed_users(models: Models, user_ids: list[str]) -> np.ndarray:
    return embed_queries(models.query_tower, models.reads_history, user_ids, [models.seen.get(u) for u in user_ids])


def embed_catalog(models: Models) -> np.ndarray:
    embeddings = run_batched(models.candidate_tower, "embedding", EMBED_BATCH, item_id=models.item_ids)
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def served_search(release_dir: Path) -> SearchParams:
    """The search settings the retrieval service uses for this release (from its index.json)."""
    meta = json.loads((release_dir / INDEX_DIR / INDEX_JSON).read_text(encoding="utf-8"))
    return SearchParams.from_index_meta(meta)


def scann_params(n: int, served: SearchParams, k: int = RECALL_K) -> dict:
    """The TFRS ScaNN layer's settings: the served tree-AH index's for this catalog size (trainer.index), searched
    as the retrieval service searches it; the layer's rescoring count is fixed, so it gets enough for 2k."""
    params = tree_params(n, k)
    return {
        "num_leaves": params.num_leaves,
        "num_leaves_to_search": served.leaves_to_search or params.leaves_to_search,
        "dimensions_per_block": 2,
        "num_reordering_candidates": served.pre_reorder(2 * k) or params.reorder,
    }


def build_layers(
    embeddings: np.ndarray, item_ids: np.ndarray, served: SearchParams, k: int = RECALL_K
) -> tuple[dict[str, TopKLayer], dict[str, float]]:
    """{"bruteforce": BruteForce, "scann": ScaNN} over the catalog, and each one's index-build seconds."""
    candidates, identifiers = tf.constant(embeddings), tf.constant(item_ids)
    layers: dict[str, TopKLayer] = {}
    seconds: dict[str, float] = {}
    started = time.monotonic()
    layers["bruteforce"] = tfrs.layers.factorized_top_k.BruteForce(k=k).index(candidates, identifiers)
    seconds["bruteforce"] = time.monotonic() - started
    started = time.monotonic()
    layers["scann"] = tfrs.layers.factorized_top_k.ScaNN(
        k=k, distance_measure="dot_product", **scann_params(len(item_ids), served, k)
    ).index(candidates, identifiers)
    seconds["scann"] = time.monotonic() - started
    return layers, seconds


class InProcessServer:
    """One request = query tower → top-k layer → drop seen → ranker on the first ``num_candidates`` → best ``k``."""

    def __init__(self, models: Models, layer: TopKLayer, k: int = 10, num_candidates: int = 100) -> None:
        self.models, self.layer, self.k, self.num_candidates = models, layer, k, num_candidates
        self.catalog_size = len(models.item_ids)

    def recommend(self, user_id: str) -> np.ndarray:
        history = self.models.seen.get(user_id)
        query = embed_queries(self.models.query_tower, self.models.reads_history, [user_id], [history])
        want = min(self.num_candidates + len(history), self.catalog_size)
        _, ids = self.layer(query, k=want)
        ids = ids.numpy()[0]
        if len(history):
            ids = ids[~np.isin(ids, history)]
        ids = ids[: self.num_candidates]
        if "history" in self.models.ranker_inputs:  # v2: one row of candidates, the user's history beside it
            scores = self.models.ranker(
                user_id=tf.constant([user_id]),
                history=tf.constant(pad_histories([history])),
                item_id=tf.constant(ids[None, :]),
            )["score"].numpy()[0]
        else:
            scores = (
                self.models.ranker(user_id=tf.constant(np.repeat(user_id, len(ids))), item_id=tf.constant(ids))["score"]
                .numpy()
                .reshape(-1)
            )
        return ids[np.argsort(-scores, kind="stable")[: self.k]]


def measure(server: InProcessServer, user_ids: list[str], concurrency: int, duration: float) -> LoadResult:
    """Closed-loop threads of this process calling ``server`` for ``duration`` seconds, after a short warm-up."""
    for user in user_ids[:8]:
        server.recommend(user)

    def make_call(thread: int) -> Callable[[int], None]:
        def call(n: int) -> None:
            server.recommend(user_ids[n % len(user_ids)])

        return call

    return merge([closed_loop(make_call, concurrency, duration)], concurrency, duration)


def served_index_recall(
    release_dir: Path, served: SearchParams, queries: np.ndarray, exact: np.ndarray, k: int
) -> float:
    """Recall@k of the release's serialized ScaNN searcher, searched with ``served``, against ``exact`` (row
    numbers of the exact top k)."""
    searcher = scann.scann_ops_pybind.load_searcher(
        str(release_dir / INDEX_DIR / SCANN_DIR), assets_backcompat_shim=False
    )
    return recall_at_k(search(searcher, queries, k, served)[0], exact, k)


def layer_recall(layer: TopKLayer, item_ids: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Recall@k of a TFRS top-k layer (returns item ids) against ``exact`` (row numbers of the exact top k)."""
    _, ids = layer(tf.constant(queries), k=k)
    return recall_at_k(ids.numpy(), item_ids[exact], k)


def run(
    release_dir: Path,
    user_ids: list[str],
    concurrency: list[int],
    duration: float,
    recall_users: int,
    seed: int,
    k: int,
    num_candidates: int,
) -> tuple[dict, dict[str, InProcessServer]]:
    """The result record, and the loaded servers by layer name for more measurements."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    models = load_models(release_dir)
    timings["load_models_s"] = time.monotonic() - started
    started = time.monotonic()
    embeddings = embed_catalog(models)
    timings["embed_catalog_s"] = time.monotonic() - started
    served = served_search(release_dir)
    layers, build_seconds = build_layers(embeddings, models.item_ids, served)
    timings.update({f"index_{name}_s": s for name, s in build_seconds.items()})

    out: dict = {
        "catalog_items": len(models.item_ids),
        "embedding_dim": int(embeddings.shape[1]),
        "query_tower_reads_history": models.reads_history,
        "ranker_inputs": list(models.ranker_inputs),
        "scann_layer": scann_params(len(models.item_ids), served),
        "served_search": served.to_json(),
        "results": {},
    }
    servers = {name: InProcessServer(models, layer, k, num_candidates) for name, layer in layers.items()}
    for name, server in servers.items():
        for c in concurrency:
            started = time.monotonic()
            out["results"][f"{name}@{c}"] = measure(server, user_ids, c, duration).summary()
            timings[f"measure_{name}@{c}_s"] = time.monotonic() - started

    started = time.monotonic()
    users = sample_users(release_dir, recall_users, seed)
    queries = np.ascontiguousarray(
        np.concatenate([embed_users(models, users[s : s + 1024]) for s in range(0, len(users), 1024)]), dtype=np.float32
    )
    k = min(RECALL_K, len(embeddings))
    exact = exact_top_k(embeddings, queries, k)  # once, for both recalls: at 1M items it is the costly part
    out["recall_queries"] = len(queries)
    out["ann_recall_at_100"] = served_index_recall(release_dir, served, queries, exact, k)
    out["tfrs_scann_recall_at_100"] = layer_recall(layers["scann"], models.item_ids, queries, exact, k)
    timings["recall_s"] = time.monotonic() - started
    out["timings"] = {key: round(value, 2) for key, value in timings.items()}
    return out, servers


def serve_rounds(
    servers: dict[str, InProcessServer], user_ids: list[str], concurrency: int, lines: TextIO, out: TextIO
) -> None:
    """For each line of ``lines`` (seconds), measure every layer again at ``concurrency`` for that long and write
    one JSON line {"<layer>@<concurrency>": summary}, until ``lines`` ends."""
    for line in lines:
        seconds = float(line)
        found = {
            f"{name}@{concurrency}": measure(server, user_ids, concurrency, seconds).summary()
            for name, server in servers.items()
        }
        out.write(json.dumps(found) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--release-dir", type=Path, required=True)
    parser.add_argument("--users-file", type=Path, required=True, help="JSON list of user ids to request, in turn")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--recall-users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--num-candidates", type=int, default=100)
    parser.add_argument(
        "--serve-rounds",
        action="store_true",
        help="after the result line, stay up: each stdin line (seconds) measures every layer again "
        "at the first concurrency and prints a JSON line; stdin's end stops",
    )
    args = parser.parse_args(argv)
    user_ids = json.loads(args.users_file.read_text())
    result, servers = run(
        args.release_dir,
        user_ids,
        args.concurrency,
        args.duration,
        args.recall_users,
        args.seed,
        args.k,
        args.num_candidates,
    )
    print(json.dumps(result), flush=True)
    if args.serve_rounds:
        serve_rounds(servers, user_ids, args.concurrency[0], sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
