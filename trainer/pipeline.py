"""The trainer job: load → split → train and evaluate both models → export, index → publish a release."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from funnel.artifacts import write_catalog, write_popularity, write_seen
from funnel.data import Dataset, Interactions, load_dataset
from funnel.release import INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR, ArtifactStore, new_release_id
from funnel.tf import tf
from trainer.export import candidate_tower_fingerprint, export_query_tower, export_ranker
from trainer.index import IndexConfig, build_index
from trainer.models import (
    Features,
    TrainConfig,
    evaluate_ranking,
    evaluate_retrieval,
    train_ranking,
    train_retrieval,
)
from trainer.split import seeds_split


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one trainer run depends on."""

    artifact_root: Path
    data: str = "movielens-100k"
    cache_dir: Path = Path("var/cache")
    max_users: int | None = None  # None: every user
    release_id: str | None = None  # None: generated
    set_stable: bool | None = None  # None: only when the store has no stable release yet
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)


@dataclass(frozen=True)
class PipelineResult:
    release_id: str
    metrics: dict[str, Any]
    stable: bool  # whether the stable channel now points at this release
    phase_seconds: dict[str, float]


def _features(interactions: Interactions) -> Features:
    return {"user_id": interactions.user_ids, "item_id": interactions.item_ids, "rating": interactions.ratings}


def run(config: PipelineConfig, dataset: Dataset | None = None) -> PipelineResult:
    """Run the whole job on ``dataset`` (default: load ``config.data``) and publish one release."""
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        print(f"[trainer] {name} ...", flush=True)
        start = time.monotonic()
        yield
        timings[name] = time.monotonic() - start
        print(f"[trainer] {name} done in {timings[name]:.1f} s", flush=True)

    store = ArtifactStore(config.artifact_root)
    with store.new_release(config.release_id) as writer:  # fails now, not after training, on a duplicate id
        with phase("load data"):
            if dataset is None:
                dataset = load_dataset(config.data, config.cache_dir)
            if config.max_users is not None:
                dataset = dataset.subset_users(config.max_users)
            print(f"[trainer] dataset {dataset.name}: {len(dataset.interactions)} interactions, "
                  f"{len(dataset.items)} items", flush=True)  # fmt: skip

        with phase("split"):
            train_idx, test_idx = seeds_split(len(dataset.interactions), seed=config.train.seed)
            train, test = dataset.interactions.take(train_idx), dataset.interactions.take(test_idx)
            user_vocab = np.unique(train.user_ids)  # users never seen in training get the out-of-vocabulary row
            item_vocab = dataset.items.item_ids  # the whole catalog is retrievable
            print(f"[trainer] {len(train)} train / {len(test)} test interactions, {len(user_vocab)} users", flush=True)

        runs = {"retrieval": f"retrieval-{new_release_id()}", "ranking": f"ranking-{new_release_id()}"}
        with phase("train retrieval"):
            retrieval = train_retrieval(_features(train), user_vocab, item_vocab, config.train)
        with phase("evaluate retrieval"):
            top_k = evaluate_retrieval(retrieval, _features(test), config.train)
        with phase("train ranking"):
            ranking = train_ranking(_features(train), user_vocab, item_vocab, config.train)
        with phase("evaluate ranking"):
            rmse = evaluate_ranking(ranking, _features(test), config.train)

        with phase("export models"):
            fingerprint = candidate_tower_fingerprint(retrieval.candidate_tower)
            export_query_tower(
                retrieval.query_tower, writer.dir / QUERY_TOWER_DIR,
                candidate_fingerprint=fingerprint, training_run=runs["retrieval"],
            )  # fmt: skip
            export_ranker(ranking.scorer, writer.dir / RANKER_DIR, training_run=runs["ranking"])
        with phase("build index"):
            index = build_index(
                writer.dir / INDEX_DIR,
                item_vocab,
                retrieval.candidate_tower(tf.constant(item_vocab)).numpy(),
                retrieval.query_tower(tf.constant(user_vocab)).numpy(),
                candidate_fingerprint=fingerprint,
                training_run=runs["retrieval"],
                config=config.index,
            )

        metrics = {
            "retrieval_top_k": top_k,
            "ranking_rmse": rmse,
            "index_recall_at_100": index["recall_at_100"],
            "num_train": len(train),
            "num_test": len(test),
        }
        with phase("publish"):
            write_catalog(writer.dir, dataset.items)
            write_seen(writer.dir, train.user_ids, train.item_ids)
            write_popularity(writer.dir, train.item_ids)
            run_config = {
                "data": config.data,
                "dataset": dataset.name,
                "max_users": config.max_users,
                "train": asdict(config.train),
                "index": asdict(config.index),
            }
            release_id = writer.publish(
                training_runs=runs, data_fingerprint=dataset.fingerprint(), metrics=metrics, config=run_config
            )

    stable = store.get_channel("stable")
    make_stable = config.set_stable if config.set_stable is not None else stable is None
    if make_stable:
        store.set_stable(release_id)
    print(f"[trainer] published release {release_id} in {store.releases_dir}", flush=True)
    print(
        f"[trainer] channel stable -> {release_id}"
        if make_stable
        else f"[trainer] channel stable stays at {stable} (pass --set-stable to point it at {release_id})",
        flush=True,
    )
    _print_summary(metrics, timings)
    return PipelineResult(release_id, metrics, make_stable, timings)


def _print_summary(metrics: dict[str, Any], timings: dict[str, float]) -> None:
    top_k = "  ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in metrics["retrieval_top_k"].items())
    print(f"Evaluation on {metrics['num_test']} held-out interactions (trained on {metrics['num_train']}):")
    print(f"  retrieval (factorized top-k accuracy over the catalog): {top_k}")
    print(f"  ranking RMSE: {metrics['ranking_rmse']:.4f}")
    print(f"  index recall@100 vs exact search: {metrics['index_recall_at_100']:.4f}")
    print("Phase times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()), flush=True)
