"""`make eval`: per split, train a release with the trainer job, measure it as served next to baselines, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from funnel.tf import tf

import numpy as np

from funnel.data.loaders import DATASET_SPECS, Dataset, Interactions, load_dataset
from funnel.paths import CACHE_ENV, default_cache_dir
from funnel.release.ranking import RankingRelease
from funnel.release.retrieval import RetrievalRelease
from funnel.release.scoring import blend, retrieval_weight
from funnel.release.store import CANDIDATE_TOWER_DIR, ArtifactStore, Manifest
from trainer.baselines import (
    MAX_K,
    EvalSet,
    Positions,
    global_mean_rmse,
    hit_rates,
    ials_factors,
    item_columns,
    list_positions,
    ndcg_at_k,
    rank_by_scores,
    rmse,
)
from trainer.evaluate import load_signature, run_batched
from trainer.pipeline import PipelineConfig, run, time_agnostic
from trainer.report import SplitResult, as_text, split_summary, table, write_report
from trainer.split import SPLITS, make_split
from trainer.tuning import Grids, tuned_baselines

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "var" / "eval"
DEFAULT_SPLITS = ("recent", "seeds")  # "temporal" (mostly cold start) and "validation" (to tune on) on request
PIPELINE_CANDIDATES = 100  # the pipeline retrieves this many unseen items, then ranks them with the ranker
FUNNEL_RETRIEVAL, FUNNEL_PIPELINE = "Funnel retrieval", f"Funnel pipeline (rank top {PIPELINE_CANDIDATES})"
FUNNEL_BY_HISTORY = "Funnel pipeline, unknown id + history"
BASELINE_NAMES = {
    "popularity": "Popularity",
    "item_knn": "item-kNN (tuned)",
    "ease": "EASE (tuned)",
    "ials": "iALS, implicit (tuned)",
}
BASELINE_GRIDS, BASELINE_FACTORIZER = Grids(), ials_factors  # implicit's iALS; tests put a numpy stand-in here
# Splits that hold out a random share regardless of time: measured with the time-agnostic models (--no-recency),
# the ones for data whose order carries nothing; the recency-aware defaults predict what comes next instead.
TIME_AGNOSTIC_SPLITS = ("seeds", "validation")
TRAINER_SPLIT = "recent"  # the trainer job's own held-out part (for its gate and manifest metrics), then refit
FUNNEL_RANKER, GLOBAL_MEAN = "Funnel ranker", "Global mean rating"
# Measured with TFRS on the seeds split of MovieLens 100K; the baselines here must land within about 0.005.
REFERENCE = {
    "global_mean_rmse": 1.130,
    "popularity_recall_at_100": 0.407,
    "popularity_top100_incl_seen": 0.298,
    "ease_recall_at_100": 0.619,
    "ease_recall_at_10": 0.173,
    "ease_top100_incl_seen": 0.314,
}


def pipeline_config(artifact_root: Path, split: str, epochs: int | None) -> PipelineConfig:
    """The trainer job as `python -m trainer --no-gate --set-stable` would run it on the data it is given (its own
    held-out part and refit are its defaults; with --no-recency for TIME_AGNOSTIC_SPLITS); ``epochs`` overrides
    every model config of the job that has an ``epochs`` field."""
    config = PipelineConfig(artifact_root, split=TRAINER_SPLIT, release_id=f"eval-{split}", set_stable=True, gate=None)
    if split in TIME_AGNOSTIC_SPLITS:
        config = time_agnostic(config)
    if epochs is None:
        return config
    parts = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    trained = {name: part for name, part in parts.items() if hasattr(part, "epochs")}
    return dataclasses.replace(config, **{n: dataclasses.replace(p, epochs=epochs) for n, p in trained.items()})


def _pipeline(
    retrieval: RetrievalRelease, ranking: RankingRelease, weight: float, user: str, history: np.ndarray | None
) -> np.ndarray:
    """The served pipeline's list for one user: retrieve PIPELINE_CANDIDATES unseen items, order them as the gateway
    does (the ranker's score blended with the retrieval score by ``weight``; ties keep retrieval order);
    ``history`` sent as the request's, as the gateway passes it to both stages."""
    candidates = retrieval.retrieve(user, PIPELINE_CANDIDATES, exclude_seen=True, history=history)
    if not len(candidates.item_ids) or candidates.cold_start:
        return candidates.item_ids
    scores = blend(ranking.score(user, candidates.item_ids, history).scores, candidates.scores, weight)
    return candidates.item_ids[np.argsort(-scores, kind="stable")]


def measure_release(
    path: Path, manifest: Manifest, data: EvalSet, test: Interactions, batch_size: int
) -> dict[str, Any]:
    """A release as served, through the services' release cores: {"retrieval", "pipeline", "pipeline_by_history"}
    Positions (the last: each test user under an id the release does not know, sending their stored history with
    the request) and "rmse" of the ranker's rating prediction."""
    retrieval, ranking = RetrievalRelease(path, manifest), RankingRelease(path, manifest)
    weight = retrieval_weight(manifest.config)
    users = data.users.tolist()
    listed = np.full((len(users), MAX_K), -1, dtype=np.int64)
    ranked = np.full((len(users), PIPELINE_CANDIDATES), -1, dtype=np.int64)
    anonymous = np.full((len(users), PIPELINE_CANDIDATES), -1, dtype=np.int64)
    predicted = np.empty(len(test), dtype=np.float64)
    by_user = np.argsort(data.pair_rows, kind="stable")
    bounds = np.searchsorted(data.pair_rows[by_user], np.arange(len(users) + 1))
    for row, user in enumerate(users):  # one query per user, as the services answer them
        items = retrieval.retrieve(user, MAX_K, exclude_seen=True).item_ids
        listed[row, : len(items)] = item_columns(data.items, items)
        stored = retrieval.seen.get(user)
        for lists, user_id, history in ((ranked, user, None), (anonymous, f"anonymous:{user}", stored)):
            if history is None or len(history):
                items = _pipeline(retrieval, ranking, weight, user_id, history)
                lists[row, : len(items)] = item_columns(data.items, items)
        pairs = by_user[bounds[row] : bounds[row + 1]]
        rated = ranking.score(user, test.item_ids[pairs])
        # The ranker's rating prediction: its "rating" output when it has one, else its score.
        predicted[pairs] = rated.scores if rated.ratings is None else rated.ratings
    # FactorizedTopK over the catalog, seen items counted: the query embeddings retrieve() uses (the stored
    # history) against the candidate tower's embeddings of the catalog.
    queries = np.concatenate(
        [
            retrieval.embed(users[s : s + batch_size], [retrieval.seen.get(u) for u in users[s : s + batch_size]])
            for s in range(0, len(users), batch_size)
        ]
    )
    catalog = run_batched(load_signature(path, CANDIDATE_TOWER_DIR), "embedding", batch_size, item_id=data.items)
    return {
        "retrieval": Positions(
            list_positions(listed, data.pair_rows, data.pair_cols),
            rank_by_scores(lambda rows: queries[rows] @ catalog.T, data).incl_seen,
        ),
        "pipeline": Positions(list_positions(ranked, data.pair_rows, data.pair_cols)),
        "pipeline_by_history": Positions(list_positions(anonymous, data.pair_rows, data.pair_cols)),
        "rmse": rmse(predicted, test.ratings),
    }


def _round(value: float) -> float:
    return round(float(value), 4)


def evaluate_split(dataset: Dataset, split: str, config: PipelineConfig) -> SplitResult:
    """Tuned baselines on the split, then the trainer job given only the split's training part (so its release
    knows nothing of the test part), then that release as served, on the test part."""
    train_idx, test_idx = make_split(split, dataset.interactions, seed=config.seed)
    train, test = dataset.interactions.take(train_idx), dataset.interactions.take(test_idx)
    data = EvalSet.build(train, test, dataset.items.item_ids)
    print(f"[eval] {split} split: baselines tuned on a {split} carve of the training part", flush=True)
    baselines, tuning = tuned_baselines(
        train, data, seed=config.seed, carve=split, grids=BASELINE_GRIDS, factorize=BASELINE_FACTORIZER
    )
    print(f"[eval] {split} split: trainer job on the {len(train)} training interactions", flush=True)
    job = run(config, dataset=dataclasses.replace(dataset, interactions=train))
    print(f"[eval] {split} split: measuring release {job.release_id} through the service cores", flush=True)
    path, manifest = ArtifactStore(config.artifact_root).verify(job.release_id)
    served = measure_release(path, manifest, data, test, config.eval_batch_size)

    positions = {
        FUNNEL_RETRIEVAL: served["retrieval"],
        FUNNEL_PIPELINE: served["pipeline"],
        FUNNEL_BY_HISTORY: served["pipeline_by_history"],
        **{BASELINE_NAMES[name]: p for name, p in baselines.items()},
    }
    curves = {
        name: hit_rates(p.unseen, range(1, (MAX_K if p.incl_seen is not None else PIPELINE_CANDIDATES) + 1))
        for name, p in positions.items()
    }
    ndcg = {name: ndcg_at_k(p.unseen, data.pair_rows, 10) for name, p in positions.items()}
    incl_seen = {name: hit_rates(p.incl_seen, [100])[100] for name, p in positions.items() if p.incl_seen is not None}
    rmses = {FUNNEL_RANKER: served["rmse"], GLOBAL_MEAN: global_mean_rmse(train, test)}
    best = max(baselines, key=lambda name: curves[BASELINE_NAMES[name]][10])
    cold = data.cold
    metrics = {
        "split": split,
        "ranking_rmse": _round(served["rmse"]),
        "retrieval_top100_incl_seen": _round(incl_seen[FUNNEL_RETRIEVAL]),
        "recall_at_100": _round(curves[FUNNEL_RETRIEVAL][100]),
        "recall_at_10": _round(curves[FUNNEL_RETRIEVAL][10]),
        "pipeline_recall_at_10": _round(curves[FUNNEL_PIPELINE][10]),
        "pipeline_ndcg_at_10": _round(ndcg[FUNNEL_PIPELINE]),
        "pipeline_by_history_recall_at_10": _round(curves[FUNNEL_BY_HISTORY][10]),
        "best_baseline": best,
        "pipeline_vs_best_recall_at_10": _round(curves[FUNNEL_PIPELINE][10] / curves[BASELINE_NAMES[best]][10]),
        "pipeline_vs_best_ndcg_at_10": _round(ndcg[FUNNEL_PIPELINE] / max(ndcg[BASELINE_NAMES[n]] for n in baselines)),
        "baselines": {
            "global_mean_rmse": _round(rmses[GLOBAL_MEAN]),
            **{
                f"{name}_{metric}": _round(value)
                for name, label in BASELINE_NAMES.items()
                for metric, value in (
                    ("recall_at_10", curves[label][10]),
                    ("recall_at_100", curves[label][100]),
                    ("ndcg_at_10", ndcg[label]),
                    ("top100_incl_seen", incl_seen[label]),
                )
            },
        },
        "baseline_tuning": tuning,
        "num_train": len(train),
        "num_test": len(test),
        "test_users": len(data.users),
        "cold_test_users": int(cold.sum()),
        "cold_test_pair_share": _round(np.mean(cold[data.pair_rows])),
        "release_id": job.release_id,
        "trainer_held_out": {"split": TRAINER_SPLIT, **{k: job.metrics[k] for k in ("num_train", "num_test")}},
    }
    return SplitResult(split, metrics, curves, incl_seen, rmses, ndcg, job.histories, job.phase_seconds)


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
    "Protocol: the trainer job is given only the split's training part, exactly as `python -m trainer` would be: it "
    f"evaluates on its own '{TRAINER_SPLIT}' held-out part, then refits on all it was given and publishes; the "
    "split's test part is what users did next, which neither the release nor the baselines' tuning ever see.",
    "recall@K: share of test (user, item) pairs whose item is in the user's top K after removing the items that "
    "user rated in training. Funnel retrieval lists come from `RetrievalRelease.retrieve(user, K, exclude_seen=True)` "
    "of the published release (ScaNN index and seen-item exclusion as served). Funnel pipeline: retrieve "
    f"{PIPELINE_CANDIDATES} unseen items, order them by `RankingRelease.score`, keep the top K (K ≤ "
    f"{PIPELINE_CANDIDATES}). 'unknown id + history': the same users under ids the release does not know, sending "
    "their stored history with the request (to both stages, as the gateway does).",
    "NDCG@10: per test user, DCG@10 of the test items (binary gains) over the ideal DCG@10, averaged over users.",
    "top-100 incl. seen: TFRS FactorizedTopK top-100 accuracy over the whole catalog with seen items counted "
    "(served query embeddings against the release's candidate tower); equal scores rank by catalog order, as "
    "TFRS's id-based evaluation does, which matters only for popularity's tied counts.",
    "RMSE: the exported ranker's rating prediction (its `rating` output when it has one, else `score`) on the test "
    "ratings; the global-mean baseline predicts the mean training rating.",
    "Baselines see the same training part: popularity ranks by training interaction count (ties by catalog order); "
    "item-kNN (cosine, top neighbours, shrinkage), EASE (closed form, float64) and iALS (the `implicit` library) are "
    "each tuned by recall@10 on a carve of the training part made the way the split was made (for the recent split, "
    "each user's latest 20% of their training interactions), then refitted on the whole training part. Users with "
    "no training history get the popularity ranking, as the served release answers them.",
    "recent split: each user's most recent 20% of interactions held out (ties by file order): what a deployed "
    "recommender predicts. seeds split: the TFRS tutorials' seeded 80/20 shuffle. temporal split (on request): one "
    "global time cut at the 80th percentile of timestamps; most test users joined after it (a cold-start test).",
    "Seeds are fixed (split and training seed 42, TF op determinism), so a rerun prints the same numbers up to "
    "ScaNN's tree training, which is not deterministic.",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report directory (default %(default)s)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help=f"dataset download cache [env {CACHE_ENV}]",
    )
    parser.add_argument("--data", default="movielens-100k", help=f"dataset spec: {DATASET_SPECS}")
    parser.add_argument(
        "--splits",
        default=",".join(DEFAULT_SPLITS),
        help=f"comma-separated splits from {', '.join(SPLITS)} (default %(default)s)",
    )
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
            results.append(evaluate_split(dataset, split, pipeline_config(Path(root) / split, split, args.epochs)))
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
