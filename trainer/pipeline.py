"""The trainer job: load → split → train, export, index → evaluate → gate → publish → start the rollout."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from funnel.admin_client import AdminClient
from funnel.artifacts import write_catalog, write_popularity, write_seen
from funnel.data import Dataset, Interactions, load_dataset
from funnel.errors import ReleaseError
from funnel.release import (
    CANDIDATE_TOWER_DIR,
    INDEX_DIR,
    QUERY_TOWER_DIR,
    RANKER_DIR,
    SIDECAR,
    ArtifactStore,
    RolloutState,
    new_release_id,
)
from trainer.evaluate import embed_users, evaluate_release, load_signature, run_batched
from trainer.export import export_candidate_tower, export_query_tower
from trainer.gate import GateConfig, check_gate
from trainer.index import INDEX_JSON, IndexConfig, build_index
from trainer.models import Features, Histories, RetrievalConfig, train_retrieval
from trainer.ranking import RankingConfig, export_ranker, train_ranker
from trainer.split import make_split

ONLY_CHOICES = ("index", "ranker")
RETRIEVAL_PARTS = (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, INDEX_DIR)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one trainer run depends on."""

    artifact_root: Path
    data: str = "movielens-100k"
    cache_dir: Path = Path("var/cache")
    max_users: int | None = None  # None: every user
    split: str = "seeds"  # "seeds": the tutorials' seeded shuffle; "temporal": train on the earliest 80%
    release_id: str | None = None  # None: generated
    set_stable: bool | None = None  # None: only when the store has no stable release yet
    only: str | None = None  # "index" or "ranker": rebuild that part of the stable release; None: train both models
    gate: GateConfig | None = field(default_factory=GateConfig)  # None: publish without comparing to stable
    admin_target: str | None = None  # gateway AdminService; None: publish only and print the rollout command
    admin_token: str | None = None
    rollout_fraction: float = 0.1
    seed: int = 42  # the split's
    eval_batch_size: int = 4096
    eval_max_pairs: int | None = None  # retrieval metrics on a seeded sample of this many test pairs; None: all
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.only not in (None, *ONLY_CHOICES):
            raise ValueError(f"expected only in {ONLY_CHOICES} or None, got {self.only!r}")
        if self.eval_batch_size < 1 or (self.eval_max_pairs is not None and self.eval_max_pairs < 1):
            raise ValueError(
                f"expected eval_batch_size >= 1 and eval_max_pairs >= 1 or None, "
                f"got {self.eval_batch_size} and {self.eval_max_pairs}"
            )


@dataclass(frozen=True)
class PipelineResult:
    release_id: str
    metrics: dict[str, Any]
    stable: bool  # whether the stable channel now points at this release
    rollout: RolloutState | None  # the admin service's answer when this run started a rollout
    phase_seconds: dict[str, float]
    histories: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # model -> per-epoch fit logs


class RolloutRefused(RuntimeError):
    """The release is published, but the admin service did not start its rollout."""


def _features(interactions: Interactions) -> Features:
    return {"user_id": interactions.user_ids, "item_id": interactions.item_ids}


def _history(model: object) -> dict[str, list[float]]:
    """The per-epoch logs Keras's fit recorded on ``model`` (model.history), empty when there are none."""
    logs = getattr(getattr(model, "history", None), "history", None) or {}
    return {name: [float(v) for v in values] for name, values in logs.items()}


def _sidecar(part_dir: Path) -> dict[str, Any]:
    return json.loads((part_dir / SIDECAR).read_text(encoding="utf-8"))


def _stable_base(store: ArtifactStore, stable_id: str | None, only: str | None) -> tuple[Path, dict[str, str]]:
    """The verified stable release that --only rebuilds from and the gate compares with, and its training runs.

    Checked before training, so a run that could not finish fails at once.
    """
    if stable_id is None:
        raise ReleaseError(
            f"--only {only} rebuilds part of the stable release, but channel stable in {store.channels_dir} is unset; "
            "run without --only first"
        )
    path, manifest = store.verify(stable_id)
    missing = [part for part in (*RETRIEVAL_PARTS, RANKER_DIR) if not (path / part).is_dir()]
    if missing:
        user, remedy = (
            (f"--only {only}", "run without --only to train both models") if only
            else ("the gate", "pass --no-gate to publish without comparing")
        )  # fmt: skip
        raise ReleaseError(
            f"{user}: expected stable release {stable_id} to hold {', '.join(missing)}/, found none "
            f"(published before the trainer exported them); {remedy}"
        )
    return path, manifest.training_runs


def _copy_parts(source: Path, target: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        shutil.copytree(source / part, target / part)


def _index_from_towers(
    release_dir: Path, user_vocab: np.ndarray, item_vocab: np.ndarray, train_items: Histories, config: IndexConfig
) -> None:
    """Build index/ from the release's exported towers: the catalog through the candidate tower, recall queries
    through the query tower (with each user's training items as history); the index carries the candidate tower's
    fingerprint and training run."""
    query_meta, candidate_meta = _sidecar(release_dir / QUERY_TOWER_DIR), _sidecar(release_dir / CANDIDATE_TOWER_DIR)
    fingerprint = candidate_meta["candidate_tower_fingerprint"]
    if query_meta["candidate_tower_fingerprint"] != fingerprint:
        raise ReleaseError(
            f"expected the query tower to pair with candidate tower {fingerprint[:12]}…, "
            f"got {query_meta['candidate_tower_fingerprint'][:12]}…"
        )
    batch = 8192
    build_index(
        release_dir / INDEX_DIR,
        item_vocab,
        run_batched(load_signature(release_dir, CANDIDATE_TOWER_DIR), "embedding", batch, item_id=item_vocab),
        embed_users(load_signature(release_dir, QUERY_TOWER_DIR), user_vocab, train_items, batch),
        candidate_fingerprint=fingerprint,
        training_run=candidate_meta["training_run"],
        config=config,
    )


def _start_rollout(target: str, token: str | None, release_id: str, fraction: float) -> RolloutState:
    try:
        with AdminClient(target, token) as client:
            return client.start_rollout(release_id, fraction)
    except grpc.RpcError as exc:
        raise RolloutRefused(
            f"release {release_id} is published, but the admin service at {target} refused to start its rollout: "
            f"{exc.code().name}: {exc.details()}"
        ) from None


def run(config: PipelineConfig, dataset: Dataset | None = None) -> PipelineResult:
    """Run the whole job on ``dataset`` (default: load ``config.data``), publish one release and start its rollout.

    Raises GateRefused (nothing published) when the release is worse than stable beyond ``config.gate``, and
    RolloutRefused (the release stays published) when the admin service refuses the rollout.
    """
    timings: dict[str, float] = {}
    histories: dict[str, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        print(f"[trainer] {name} ...", flush=True)
        start = time.monotonic()
        yield
        timings[name] = time.monotonic() - start
        print(f"[trainer] {name} done in {timings[name]:.1f} s", flush=True)

    store = ArtifactStore(config.artifact_root)
    stable_id = store.get_channel("stable")
    gated = config.gate is not None and stable_id is not None
    base_dir, base_runs = _stable_base(store, stable_id, config.only) if config.only or gated else (None, {})
    with store.new_release(config.release_id) as writer:  # fails now, not after training, on a duplicate id
        with phase("load data"):
            if dataset is None:
                dataset = load_dataset(config.data, config.cache_dir)
            if config.max_users is not None:
                dataset = dataset.subset_users(config.max_users)
            print(f"[trainer] dataset {dataset.name}: {len(dataset.interactions)} interactions, "
                  f"{len(dataset.items)} items", flush=True)  # fmt: skip

        with phase("split"):
            train_idx, test_idx = make_split(config.split, dataset.interactions, seed=config.seed)
            train, test = dataset.interactions.take(train_idx), dataset.interactions.take(test_idx)
            user_vocab = np.unique(train.user_ids)  # users never seen in training get the out-of-vocabulary row
            item_vocab = dataset.items.item_ids  # the whole catalog is retrievable
            train_items = Histories(train.user_ids, train.item_ids)  # the query tower's history input, as served
            print(f"[trainer] {len(train)} train / {len(test)} test interactions, {len(user_vocab)} users", flush=True)

        runs = dict(base_runs) if config.only else {}  # a part copied from stable keeps the run it came from
        if config.only == "ranker":
            print(f"[trainer] copying {', '.join(RETRIEVAL_PARTS)} from stable release {stable_id}", flush=True)
            _copy_parts(base_dir, writer.dir, RETRIEVAL_PARTS)
        else:
            if config.only == "index":
                print(f"[trainer] copying the towers and ranker from stable release {stable_id}", flush=True)
                _copy_parts(base_dir, writer.dir, (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, RANKER_DIR))
            else:
                runs["retrieval"] = f"retrieval-{new_release_id()}"
                with phase("train retrieval"):
                    retrieval = train_retrieval(_features(train), item_vocab, config.retrieval, histories=train_items)
                histories["retrieval"] = _history(retrieval)
                with phase("export towers"):
                    fingerprint = export_candidate_tower(
                        retrieval.candidate_tower, writer.dir / CANDIDATE_TOWER_DIR, training_run=runs["retrieval"]
                    )
                    export_query_tower(
                        retrieval.query_tower, writer.dir / QUERY_TOWER_DIR,
                        candidate_fingerprint=fingerprint, training_run=runs["retrieval"],
                    )  # fmt: skip
            with phase("build index"):
                _index_from_towers(writer.dir, user_vocab, item_vocab, train_items, config.index)
        if config.only != "index":
            runs["ranking"] = f"ranking-{new_release_id()}"
            with phase("train ranking"):
                ranking = train_ranker(train, dataset, config.ranking)
            histories["ranking"] = _history(ranking)
            with phase("export ranker"):
                export_ranker(ranking, writer.dir / RANKER_DIR, training_run=runs["ranking"])

        evaluation_options = {
            "batch_size": config.eval_batch_size, "max_pairs": config.eval_max_pairs, "seed": config.seed
        }  # fmt: skip
        with phase("evaluate"):
            evaluation = evaluate_release(writer.dir, test, train_items, **evaluation_options)
        gate = None
        if gated:
            with phase(f"evaluate stable release {stable_id}"):
                stable_evaluation = evaluate_release(base_dir, test, train_items, **evaluation_options)
            gate = check_gate(evaluation, stable_evaluation, stable_id, config.gate)  # raises GateRefused
        else:
            print(f"[trainer] gate skipped: {'--no-gate' if stable_id else 'no stable release yet'}", flush=True)

        index_meta = json.loads((writer.dir / INDEX_DIR / INDEX_JSON).read_text(encoding="utf-8"))
        metrics = {
            **evaluation.as_metrics(),
            "index_recall_at_100": index_meta["recall_at_100"],
            "num_train": len(train),
            "num_test": len(test),
            "gate": gate,
        }
        with phase("publish"):
            write_catalog(writer.dir, dataset.items)
            write_seen(writer.dir, train.user_ids, train.item_ids)
            write_popularity(writer.dir, train.item_ids)
            run_config = {
                "data": config.data,
                "dataset": dataset.name,
                "max_users": config.max_users,
                "split": config.split,
                "only": config.only,
                "base_release": stable_id if config.only else None,
                "gate": None if config.gate is None else asdict(config.gate),
                "seed": config.seed,
                "eval_max_pairs": config.eval_max_pairs,
                "retrieval": asdict(config.retrieval),
                "ranking": asdict(config.ranking),
                "index": asdict(config.index),
            }
            release_id = writer.publish(
                training_runs=runs, data_fingerprint=dataset.fingerprint(), metrics=metrics, config=run_config
            )

    print(f"[trainer] published release {release_id} in {store.releases_dir}", flush=True)
    _print_summary(metrics, timings)
    make_stable = config.set_stable if config.set_stable is not None else stable_id is None
    rollout = None
    if make_stable:
        store.set_stable(release_id)
        print(f"[trainer] channel stable -> {release_id}", flush=True)
    elif config.admin_target:
        rollout = _start_rollout(config.admin_target, config.admin_token, release_id, config.rollout_fraction)
        print(f"[trainer] rollout started via {config.admin_target}: stable {rollout.stable}, "
              f"candidate {rollout.candidate} at fraction {rollout.fraction:g}", flush=True)  # fmt: skip
    else:
        print(f"[trainer] channel stable stays at {stable_id}; no admin target, so start the rollout with:\n"
              f"  funnel rollout start {release_id} --fraction {config.rollout_fraction:g}", flush=True)  # fmt: skip
    return PipelineResult(release_id, metrics, make_stable, rollout, timings, histories)


def _print_summary(metrics: dict[str, Any], timings: dict[str, float]) -> None:
    top_k = "  ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in metrics["retrieval_top_k"].items())
    print(f"Evaluation of the exported models on {metrics['num_test']} held-out interactions "
          f"(trained on {metrics['num_train']}):")  # fmt: skip
    recall = "  ".join(f"recall@{k.split('_')[1]} {v:.4f}" for k, v in metrics["retrieval_recall"].items())
    print(f"  retrieval (factorized top-k accuracy over the catalog): {top_k}")
    print(f"  retrieval (recall over the catalog, the user's training items excluded): {recall}")
    print(f"  ranking RMSE: {metrics['ranking_rmse']:.4f}")
    print(f"  index recall@100 vs exact search: {metrics['index_recall_at_100']:.4f}")
    print("Phase times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()), flush=True)
