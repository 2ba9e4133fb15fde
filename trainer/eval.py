"""`make eval`: per split, train a release with the trainer job, measure it as served next to baselines, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from funnel.data import DATASET_SPECS, Dataset, Interactions, load_dataset
from funnel.release import CANDIDATE_TOWER_DIR, ArtifactStore, Manifest
from funnel.tf import tf
from ranking_service.core import RankingRelease
from retrieval_service.core import RetrievalRelease
from trainer.__main__ import CACHE_ENV
from trainer.baselines import (
    EASE_LAMBDA,
    MAX_K,
    EvalSet,
    Positions,
    global_mean_rmse,
    hit_rates,
    item_columns,
    list_positions,
    rank_baselines,
    rank_by_scores,
    rmse,
)
from trainer.evaluate import load_signature, run_batched
from trainer.pipeline import PipelineConfig, run
from trainer.report import SplitResult, as_text, split_summary, table, write_report
from trainer.split import SPLITS, make_split

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "var" / "eval"
DEFAULT_SPLITS = ("seeds", "temporal")  # "validation" is for tuning, on request
PIPELINE_CANDIDATES = 100  # the pipeline retrieves this many unseen items, then ranks them with the ranker
FUNNEL_RETRIEVAL, FUNNEL_PIPELINE = "Funnel retrieval", f"Funnel pipeline (rank top {PIPELINE_CANDIDATES})"
POPULARITY, EASE = "Popularity", f"EASE (λ={EASE_LAMBDA:g})"
FUNNEL_RANKER, GLOBAL_MEAN = "Funnel ranker", "Global mean rating"
# Measured with TFRS on the seeds split of MovieLens 100K; the baselines here must land within about 0.005.
REFERENCE = {
    "global_mean_rmse": 1.130, "popularity_recall_at_100": 0.407, "popularity_top100_incl_seen": 0.298,
    "ease_recall_at_100": 0.619, "ease_recall_at_10": 0.173, "ease_top100_incl_seen": 0.314,
}  # fmt: skip


def pipeline_config(artifact_root: Path, split: str, epochs: int | None) -> PipelineConfig:
    """The trainer job as `python -m trainer --no-gate --set-stable` would run it; ``epochs`` overrides every
    model config of the job that has an ``epochs`` field."""
    config = PipelineConfig(artifact_root, split=split, release_id=f"eval-{split}", set_stable=True, gate=None)
    if epochs is None:
        return config
    parts = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    trained = {name: part for name, part in parts.items() if hasattr(part, "epochs")}
    return dataclasses.replace(config, **{n: dataclasses.replace(p, epochs=epochs) for n, p in trained.items()})


def measure_release(path: Path, manifest: Manifest, data: EvalSet, test: Interactions, batch_size: int
                    ) -> tuple[Positions, Positions, float]:  # fmt: skip
    """(retrieval positions, pipeline positions, ranker RMSE) of a release, through the services' release cores."""
    retrieval, ranking = RetrievalRelease(path, manifest), RankingRelease(path, manifest)
    users = data.users.tolist()
    listed = np.full((len(users), MAX_K), -1, dtype=np.int64)
    ranked = np.full((len(users), PIPELINE_CANDIDATES), -1, dtype=np.int64)
    predicted = np.empty(len(test), dtype=np.float64)
    by_user = np.argsort(data.pair_rows, kind="stable")
    bounds = np.searchsorted(data.pair_rows[by_user], np.arange(len(users) + 1))
    for row, user in enumerate(users):  # one query per user, as the services answer them
        items = retrieval.retrieve(user, MAX_K, exclude_seen=True).item_ids
        listed[row, : len(items)] = item_columns(data.items, items)
        candidates = retrieval.retrieve(user, PIPELINE_CANDIDATES, exclude_seen=True).item_ids
        if len(candidates):
            order = np.argsort(-ranking.score(user, candidates).scores, kind="stable")  # ties keep retrieval order
            ranked[row, : len(candidates)] = item_columns(data.items, candidates[order])
        pairs = by_user[bounds[row] : bounds[row + 1]]
        rated = ranking.score(user, test.item_ids[pairs])
        # The ranker's rating prediction: its "rating" output when it has one, else its score.
        ratings = getattr(rated, "ratings", None)
        predicted[pairs] = rated.scores if ratings is None else ratings
    # FactorizedTopK over the catalog, seen items counted: the query embeddings retrieve() uses (the stored
    # history) against the candidate tower's embeddings of the catalog.
    queries = np.concatenate([
        retrieval.embed(users[s : s + batch_size], [retrieval.seen.get(u) for u in users[s : s + batch_size]])
        for s in range(0, len(users), batch_size)
    ])  # fmt: skip
    catalog = run_batched(load_signature(path, CANDIDATE_TOWER_DIR), "embedding", batch_size, item_id=data.items)
    served = Positions(
        list_positions(listed, data.pair_rows, data.pair_cols),
        rank_by_scores(lambda rows: queries[rows] @ catalog.T, data).incl_seen,
    )
    pipeline = Positions(list_positions(ranked, data.pair_rows, data.pair_cols))
    return served, pipeline, rmse(predicted, test.ratings)


def _round(value: float) -> float:
    return round(float(value), 4)


def evaluate_split(dataset: Dataset, config: PipelineConfig) -> SplitResult:
    """Baselines on the split, then the trainer job into ``config.artifact_root``, then its release as served."""
    train_idx, test_idx = make_split(config.split, dataset.interactions, seed=config.seed)
    train, test = dataset.interactions.take(train_idx), dataset.interactions.take(test_idx)
    data = EvalSet.build(train, test, dataset.items.item_ids)
    print(f"[eval] {config.split} split: baselines (popularity, EASE λ={EASE_LAMBDA:g})", flush=True)
    baselines = rank_baselines(train, data)
    print(f"[eval] {config.split} split: trainer job", flush=True)
    job = run(config, dataset=dataset)
    if (job.metrics["num_train"], job.metrics["num_test"]) != (len(train), len(test)):
        raise RuntimeError(
            f"expected the trainer to split {len(train)}/{len(test)} like the evaluation, "
            f"got {job.metrics['num_train']}/{job.metrics['num_test']}"
        )
    print(f"[eval] {config.split} split: measuring release {job.release_id} through the service cores", flush=True)
    path, manifest = ArtifactStore(config.artifact_root).verify(job.release_id)
    served, pipeline, ranker_rmse = measure_release(path, manifest, data, test, config.eval_batch_size)

    positions = {FUNNEL_RETRIEVAL: served, FUNNEL_PIPELINE: pipeline,
                 POPULARITY: baselines["popularity"], EASE: baselines["ease"]}  # fmt: skip
    curves = {
        name: hit_rates(p.unseen, range(1, (PIPELINE_CANDIDATES if name == FUNNEL_PIPELINE else MAX_K) + 1))
        for name, p in positions.items()
    }
    incl_seen = {name: hit_rates(p.incl_seen, [100])[100] for name, p in positions.items() if p.incl_seen is not None}
    rmses = {FUNNEL_RANKER: ranker_rmse, GLOBAL_MEAN: global_mean_rmse(train, test)}
    cold = data.cold
    metrics = {
        "split": config.split,
        "ranking_rmse": _round(ranker_rmse),
        "retrieval_top100_incl_seen": _round(incl_seen[FUNNEL_RETRIEVAL]),
        "recall_at_100": _round(curves[FUNNEL_RETRIEVAL][100]),
        "recall_at_10": _round(curves[FUNNEL_RETRIEVAL][10]),
        "pipeline_recall_at_10": _round(curves[FUNNEL_PIPELINE][10]),
        "baselines": {
            "global_mean_rmse": _round(rmses[GLOBAL_MEAN]),
            "popularity_recall_at_100": _round(curves[POPULARITY][100]),
            "popularity_recall_at_10": _round(curves[POPULARITY][10]),
            "popularity_top100_incl_seen": _round(incl_seen[POPULARITY]),
            "ease_recall_at_100": _round(curves[EASE][100]),
            "ease_recall_at_10": _round(curves[EASE][10]),
            "ease_top100_incl_seen": _round(incl_seen[EASE]),
        },
        "num_train": len(train),
        "num_test": len(test),
        "test_users": len(data.users),
        "cold_test_users": int(cold.sum()),
        "cold_test_pair_share": _round(np.mean(cold[data.pair_rows])),
        "release_id": job.release_id,
    }
    return SplitResult(config.split, metrics, curves, incl_seen, rmses, job.histories, job.phase_seconds)


def summary(results: Sequence[SplitResult]) -> dict[str, Any]:
    """The first split's metrics, with every other split's nested under its name."""
    top = dict(results[0].metrics)
    for result in results[1:]:
        top[result.split] = result.metrics
    return top


def reference_note(result: SplitResult) -> str:
    """How the seeds-split baselines compare with the TFRS reference values."""
    b = result.metrics["baselines"]
    diffs = ", ".join(f"{k} {b[k]:.4f} vs {ref:.3f} ({b[k] - ref:+.4f})" for k, ref in REFERENCE.items())
    return f"Baselines against the TFRS reference values (MovieLens 100K, seeds split): {diffs}."


NOTES = (
    "recall@K: share of test (user, item) pairs whose item is in the user's top K after removing the items that "
    "user rated in training. Funnel retrieval lists come from `RetrievalRelease.retrieve(user, K, exclude_seen=True)` "
    "of the published release (ScaNN index and seen-item exclusion as served). Funnel pipeline: retrieve "
    f"{PIPELINE_CANDIDATES} unseen items, order them by `RankingRelease.score`, keep the top K (K ≤ "
    f"{PIPELINE_CANDIDATES}).",
    "top-100 incl. seen: TFRS FactorizedTopK top-100 accuracy over the whole catalog with seen items counted "
    "(served query embeddings against the release's candidate tower); equal scores rank by catalog order, as "
    "TFRS's id-based evaluation does, which matters only for popularity's tied counts.",
    "RMSE: the exported ranker's rating prediction (its `rating` output when it has one, else `score`) on the test "
    "ratings; the global-mean baseline predicts the mean training rating.",
    "Baselines use the same split: popularity ranks by training interaction count (ties by catalog order); EASE is "
    f"the closed form with λ={EASE_LAMBDA:g} on binary training interactions (float64). Users with no training "
    "history get the popularity ranking from both, as the served release answers them with its popularity list.",
    "temporal split: one global time cut at the 80th percentile of timestamps (ties by file order); users who "
    "joined after the cut have no history, so this split is largely a cold-start test.",
    "Seeds are fixed (split and training seed 42, TF op determinism), so a rerun prints the same numbers.",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report directory (default %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(CACHE_ENV, "var/cache")),
                        help=f"dataset download cache [env {CACHE_ENV}]")  # fmt: skip
    parser.add_argument("--data", default="movielens-100k", help=f"dataset spec: {DATASET_SPECS}")
    parser.add_argument("--splits", default=",".join(DEFAULT_SPLITS),
                        help=f"comma-separated splits from {', '.join(SPLITS)} (default %(default)s)")  # fmt: skip
    parser.add_argument("--epochs", type=int, help="training epochs for each model (default: the trainer's)")
    parser.add_argument("--max-users", type=int, help="evaluate on the interactions of this many users only")
    args = parser.parse_args(argv)
    args.splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in args.splits if s not in SPLITS]
    if not args.splits or unknown or len(set(args.splits)) != len(args.splits):
        parser.error(f"expected distinct splits from {', '.join(SPLITS)}, got {','.join(args.splits) or 'none'}")
    for name in ("epochs", "max_users"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"expected --{name.replace('_', '-')} >= 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = load_dataset(args.data, args.cache_dir)
    if args.max_users is not None:
        dataset = dataset.subset_users(args.max_users)
    results = []
    with tempfile.TemporaryDirectory(prefix="funnel-eval-") as root:
        for split in args.splits:
            tf.keras.backend.clear_session()
            results.append(evaluate_split(dataset, pipeline_config(Path(root) / split, split, args.epochs)))
    notes = list(NOTES)
    seeds = next((r for r in results if r.split == "seeds"), None)
    if seeds is not None and dataset.name == "ml-100k":
        notes.insert(0, reference_note(seeds))
    intro = (
        f"Dataset {dataset.name} ({len(dataset.interactions)} interactions, {len(dataset.items)} items, "
        f"fingerprint {dataset.fingerprint()[:12]}), trained and measured with `python -m trainer.eval` "
        "(trainer job run ungated into a temporary artifact root, then its release loaded by the service cores)."
    )
    top = summary(results)
    report = write_report(args.out, results, top, intro, notes)
    for result in results:
        print(f"\n== {result.split} split: {split_summary(result)}\n{as_text(table(result))}")
    if seeds is not None and dataset.name == "ml-100k":
        print(reference_note(seeds))
    print(f"report: {report}", flush=True)
    print(json.dumps(top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
