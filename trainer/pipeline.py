"""The trainer job: split → train, export, index → evaluate → gate → refit on all → publish → rollout."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from funnel.client import AdminClient, promote_when_ready
from funnel.data.loaders import Dataset, Interactions, load_dataset
from funnel.errors import ReleaseError
from funnel.paths import default_cache_dir
from funnel.release.files import Histories, read_seen, write_catalog, write_popularity, write_seen
from funnel.release.scoring import RETRIEVAL_WEIGHT_KEY
from funnel.release.store import (
    CANDIDATE_TOWER_DIR,
    INDEX_DIR,
    QUERY_TOWER_DIR,
    RANKER_DIR,
    SIDECAR,
    ArtifactStore,
    RolloutState,
    new_release_id,
)
from trainer.evaluate import Evaluation, embed_users, evaluate_release, load_signature, run_batched
from trainer.export import export_candidate_tower, export_query_tower
from trainer.gate import GateConfig, check_gate
from trainer.index import INDEX_JSON, IndexConfig, build_index
from trainer.models import Features, RetrievalConfig, train_retrieval
from trainer.ranking import RankingConfig, export_ranker, train_ranker
from trainer.split import make_split

ONLY_CHOICES = ("index", "ranker")
RETRIEVAL_PARTS = (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, INDEX_DIR)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one trainer run depends on."""

    artifact_root: Path
    data: str = "movielens-100k"
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_users: int | None = None  # None: every user
    split: str = "recent"  # held out to evaluate and gate: "recent" (each user's latest 20%), "seeds", "temporal"
    refit: bool = True  # after the gate, train again on every interaction and publish that
    retrieval_weight: float = 1.0  # the served order: standardized ranker score + this x standardized retrieval score
    release_id: str | None = None  # None: generated
    set_stable: bool | None = None  # None: only when the store has no stable release yet
    unless_stable: bool = False  # do nothing when the store has a stable release (a first-boot job)
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
        if self.retrieval_weight < 0:
            raise ValueError(f"expected retrieval_weight >= 0, got {self.retrieval_weight}")
        if self.eval_batch_size < 1 or (self.eval_max_pairs is not None and self.eval_max_pairs < 1):
            raise ValueError(
                f"expected eval_batch_size >= 1 and eval_max_pairs >= 1 or None, "
                f"got {self.eval_batch_size} and {self.eval_max_pairs}"
            )


def time_agnostic(config: PipelineConfig) -> PipelineConfig:
    """``config`` for data whose order says nothing (`--no-recency`): the query tower pools the whole history
    alike and trains leave-one-out, the ranker weighs history items alike, and the ranker alone orders the
    candidates (the models as tuned on random validation cuts before the recency-aware ones)."""
    return replace(
        config,
        retrieval=replace(config.retrieval, recency=False),
        ranking=replace(config.ranking, recency_scale=0.0),
        retrieval_weight=0.0,
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
            (f"--only {only}", "run without --only to train both models")
            if only
            else ("the gate", "pass --no-gate to publish without comparing")
        )
        raise ReleaseError(
            f"{user}: expected stable release {stable_id} to hold {', '.join(missing)}/, found none "
            f"(published before the trainer exported them); {remedy}"
        )
    return path, manifest.training_runs


def _copy_parts(source: Path, target: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        shutil.copytree(source / part, target / part)


def _index_from_towers(
    release_dir: Path, user_vocab: np.ndarray, item_vocab: np.ndarray, histories: Histories, config: IndexConfig
) -> None:
    """Build index/ from the release's exported towers: the catalog through the candidate tower, recall queries
    through the query tower (with each user's items as history); the index carries the candidate tower's
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
        embed_users(load_signature(release_dir, QUERY_TOWER_DIR), user_vocab, histories, batch),
        candidate_fingerprint=fingerprint,
        training_run=candidate_meta["training_run"],
        config=config,
    )


_SET_STABLE_NEEDS_ADMIN = (
    "--set-stable: {root} already has stable release {stable}; on a store with a stable release only the gateway's "
    "admin API changes stable, once every replica holds the new release. Pass --admin-target (env "
    "FUNNEL_ADMIN_TARGET) to roll the new release out and promote it, or run without --set-stable and then "
    "`funnel rollout start <release> && funnel rollout promote <release>`."
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


def _promote(target: str, token: str | None, release_id: str) -> RolloutState:
    """Roll ``release_id`` out and promote it once every replica holds it (--set-stable on a live store)."""
    try:
        with AdminClient(target, token) as client:
            return promote_when_ready(client, release_id)
    except (grpc.RpcError, TimeoutError) as exc:
        reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
        raise RolloutRefused(
            f"release {release_id} is published, but the admin service at {target} did not promote it: {reason}"
        ) from None


class _Job:
    """One run's state: its config, the dataset, the stable release it builds on or gates against, phase timings."""

    def __init__(self, config: PipelineConfig, dataset: Dataset, base_dir: Path | None, stable_id: str | None) -> None:
        self.config, self.dataset, self.base_dir, self.stable_id = config, dataset, base_dir, stable_id
        self.timings: dict[str, float] = {}
        self.histories: dict[str, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"[trainer] {name} ...", flush=True)
        start = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - start
        print(f"[trainer] {name} done in {self.timings[name]:.1f} s", flush=True)

    def build(self, target: Path, data: Interactions, label: str) -> dict[str, str]:
        """Train (or copy from stable, with --only) the towers, index and ranker on ``data`` into ``target``; the
        training runs of the parts. ``label`` names the phases ("held-out" or "refit" models)."""
        config, runs = self.config, {}
        histories = Histories(data.user_ids, data.item_ids, data.timestamps)  # the towers' history input, as served
        item_vocab = self.dataset.items.item_ids  # the whole catalog is retrievable
        if config.only == "ranker":
            print(f"[trainer] copying {', '.join(RETRIEVAL_PARTS)} from stable release {self.stable_id}", flush=True)
            assert self.base_dir is not None  # run() resolves the stable release whenever --only is given
            _copy_parts(self.base_dir, target, RETRIEVAL_PARTS)
        else:
            if config.only == "index":
                print(f"[trainer] copying the towers and ranker from stable release {self.stable_id}", flush=True)
                assert self.base_dir is not None  # as above
                _copy_parts(self.base_dir, target, (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, RANKER_DIR))
            else:
                runs["retrieval"] = f"retrieval-{new_release_id()}"
                with self.phase(f"train retrieval ({label})"):
                    retrieval = train_retrieval(_features(data), item_vocab, config.retrieval, histories=histories)
                self.histories[f"retrieval ({label})"] = _history(retrieval)
                with self.phase(f"export towers ({label})"):
                    fingerprint = export_candidate_tower(
                        retrieval.candidate_tower, target / CANDIDATE_TOWER_DIR, training_run=runs["retrieval"]
                    )
                    export_query_tower(
                        retrieval.query_tower,
                        target / QUERY_TOWER_DIR,
                        candidate_fingerprint=fingerprint,
                        training_run=runs["retrieval"],
                    )
            with self.phase(f"build index ({label})"):
                _index_from_towers(target, np.unique(data.user_ids), item_vocab, histories, config.index)
        if config.only != "index":
            runs["ranking"] = f"ranking-{new_release_id()}"
            with self.phase(f"train ranking ({label})"):
                ranking = train_ranker(data, self.dataset, config.ranking)
            self.histories[f"ranking ({label})"] = _history(ranking)
            with self.phase(f"export ranker ({label})"):
                export_ranker(ranking, target / RANKER_DIR, training_run=runs["ranking"])
        return runs

    def evaluate(self, models: Path, train: Interactions, test: Interactions) -> tuple[Evaluation, dict | None]:
        """The held-out models' evaluation on ``test`` and the gate's record (None when there is no gate); raises
        GateRefused. The gate compares both releases on the held-out interactions the stable release was not given
        (a stable release refitted on all its data has seen the rest)."""
        config, histories = self.config, Histories(train.user_ids, train.item_ids, train.timestamps)

        def evaluate(release_dir: Path, pairs: Interactions) -> Evaluation:
            return evaluate_release(
                release_dir,
                pairs,
                histories,
                batch_size=config.eval_batch_size,
                max_pairs=config.eval_max_pairs,
                seed=config.seed,
            )

        with self.phase("evaluate held-out models"):
            evaluation = evaluate(models, test)
        if config.gate is None or self.stable_id is None:
            print(f"[trainer] gate skipped: {'--no-gate' if self.stable_id else 'no stable release yet'}", flush=True)
            return evaluation, None
        assert self.base_dir is not None
        unseen = test.take(~read_seen(self.base_dir).contains(test.user_ids, test.item_ids))
        if not len(unseen):
            print(
                f"[trainer] gate skipped: stable release {self.stable_id} was given every held-out interaction "
                "(the same data): nothing to compare on",
                flush=True,
            )
            return evaluation, {"stable_release_id": self.stable_id, "passed": True, "compared_pairs": 0}
        with self.phase(f"gate against stable release {self.stable_id} on {len(unseen)} held-out interactions"):
            new = evaluation if len(unseen) == len(test) else evaluate(models, unseen)
            stable = evaluate(self.base_dir, unseen)
        record = check_gate(new, stable, self.stable_id, config.gate)  # raises GateRefused
        return evaluation, {**record, "compared_pairs": len(unseen)}


def run(config: PipelineConfig, dataset: Dataset | None = None) -> PipelineResult:
    """Run the whole job on ``dataset`` (default: load ``config.data``), publish one release and start its rollout.

    Train on the split's training part, evaluate those models on its held-out part and gate them against the
    stable release; then (``config.refit``) train again on every interaction with the same settings and publish
    that. The release's seen items, stored histories and popularity always cover every interaction.

    Raises GateRefused (nothing published) when the release is worse than stable beyond ``config.gate``, and
    RolloutRefused (the release stays published) when the admin service refuses the rollout.
    """
    store = ArtifactStore(config.artifact_root)
    stable_id = store.get_channel("stable")
    if config.set_stable and stable_id is not None and not config.admin_target:
        raise RolloutRefused(_SET_STABLE_NEEDS_ADMIN.format(stable=stable_id, root=config.artifact_root))
    gated = config.gate is not None and stable_id is not None
    base_dir, base_runs = _stable_base(store, stable_id, config.only) if config.only or gated else (None, {})
    with store.new_release(config.release_id) as writer:  # fails now, not after training, on a duplicate id
        job = _Job(config, _load(config, dataset), base_dir, stable_id)
        dataset = job.dataset
        everything = dataset.interactions
        with job.phase("split"):
            train_idx, test_idx = make_split(config.split, everything, seed=config.seed)
            train, test = everything.take(train_idx), everything.take(test_idx)
            print(
                f"[trainer] {config.split} split: {len(train)} train / {len(test)} held-out interactions, "
                f"{len(np.unique(train.user_ids))} users",
                flush=True,
            )

        runs = dict(base_runs) if config.only else {}  # a part copied from stable keeps the run it came from
        if config.refit:
            with tempfile.TemporaryDirectory(dir=store.staging_dir, prefix=f"{writer.release_id}.held-out.") as held:
                job.build(Path(held), train, "held-out")
                evaluation, gate = job.evaluate(Path(held), train, test)
            runs.update(job.build(writer.dir, everything, "refit"))
        else:
            runs.update(job.build(writer.dir, train, "held-out"))
            evaluation, gate = job.evaluate(writer.dir, train, test)
        published = everything if config.refit else train

        index_meta = json.loads((writer.dir / INDEX_DIR / INDEX_JSON).read_text(encoding="utf-8"))
        metrics = {
            **evaluation.as_metrics(),
            "index_recall_at_100": index_meta["recall_at_100"],
            "num_train": len(train),
            "num_test": len(test),
            "gate": gate,
            "trained_on": {
                "interactions": len(published),
                "users": len(np.unique(published.user_ids)),
                "until_timestamp": int(published.timestamps.max()),
                "refit": config.refit,
            },
        }
        with job.phase("publish"):
            write_catalog(writer.dir, dataset.items)
            write_seen(writer.dir, Histories(everything.user_ids, everything.item_ids, everything.timestamps))
            write_popularity(writer.dir, everything.item_ids)
            run_config = {
                "data": config.data,
                "dataset": dataset.name,
                "max_users": config.max_users,
                "split": config.split,
                "refit": config.refit,
                RETRIEVAL_WEIGHT_KEY: config.retrieval_weight,
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
    _print_summary(metrics, job.timings)
    stable_id = store.get_channel("stable")  # again: another job may have published meanwhile
    make_stable = config.set_stable if config.set_stable is not None else stable_id is None
    rollout = None
    if make_stable and stable_id is None:
        store.set_stable(release_id)  # the first release into an empty store: no service serves anything yet
        print(f"[trainer] channel stable -> {release_id} (the store had no stable release)", flush=True)
    elif make_stable:
        if not config.admin_target:
            raise RolloutRefused(_SET_STABLE_NEEDS_ADMIN.format(stable=stable_id, root=config.artifact_root))
        rollout = _promote(config.admin_target, config.admin_token, release_id)
        print(f"[trainer] promoted {release_id} to stable via {config.admin_target}", flush=True)
    elif config.admin_target:
        rollout = _start_rollout(config.admin_target, config.admin_token, release_id, config.rollout_fraction)
        print(
            f"[trainer] rollout started via {config.admin_target}: stable {rollout.stable}, "
            f"candidate {rollout.candidate} at fraction {rollout.fraction:g}",
            flush=True,
        )
    else:
        print(
            f"[trainer] channel stable stays at {stable_id}; no admin target, so start the rollout with:\n"
            f"  funnel rollout start {release_id} --fraction {config.rollout_fraction:g}",
            flush=True,
        )
    return PipelineResult(release_id, metrics, make_stable, rollout, job.timings, job.histories)


def _load(config: PipelineConfig, dataset: Dataset | None) -> Dataset:
    if dataset is None:
        dataset = load_dataset(config.data, config.cache_dir)
    if config.max_users is not None:
        dataset = dataset.subset_users(config.max_users)
    print(
        f"[trainer] dataset {dataset.name}: {len(dataset.interactions)} interactions, {len(dataset.items)} items",
        flush=True,
    )
    return dataset


def _print_summary(metrics: dict[str, Any], timings: dict[str, float]) -> None:
    top_k = "  ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in metrics["retrieval_top_k"].items())
    trained_on = metrics["trained_on"]
    print(
        f"Evaluation of models trained on {metrics['num_train']} interactions, on {metrics['num_test']} held-out "
        f"ones; the published models were trained on {trained_on['interactions']} "
        f"({'refit on all' if trained_on['refit'] else 'the held-out models, --no-refit'}):"
    )
    recall = "  ".join(f"recall@{k.split('_')[1]} {v:.4f}" for k, v in metrics["retrieval_recall"].items())
    print(f"  retrieval (factorized top-k accuracy over the catalog): {top_k}")
    print(f"  retrieval (recall over the catalog, the user's training items excluded): {recall}")
    print(f"  ranking RMSE: {metrics['ranking_rmse']:.4f}")
    print(f"  index recall@100 vs exact search: {metrics['index_recall_at_100']:.4f}")
    print("Phase times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()), flush=True)
