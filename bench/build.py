"""Build (or reuse) the benchmark's release with the real trainer pipeline, in its own process.

``python -m bench.build --spec '<json>' --root DIR`` trains on the dataset the spec names (a generated synthetic
catalog or MovieLens 100K), exports the towers and ranker, builds the ScaNN index and publishes one release as
stable into DIR. Training runs in a child process so the orchestrator never imports TensorFlow (and the trainer's
process-wide op determinism stays out of anything measured).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from funnel.paths import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent
BUILD_JSON = "bench_build.json"  # next to releases/ and channels/, never read by the services
SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class BuildSpec:
    """Everything the release depends on; equal specs reuse the cached release."""

    dataset: str = SYNTHETIC  # "synthetic" or a funnel.data spec such as "movielens-100k"
    items: int = 20_000  # synthetic only
    users: int = 5_000  # synthetic only
    interactions_per_user: float = 20.0  # synthetic only
    seed: int = 42
    embedding_dim: int = 64
    retrieval_epochs: int = 1
    retrieval_batch_size: int = 4096
    ranking_epochs: int = 2
    ranking_batch_size: int = 4096
    ranking_optimizer: str = "adagrad"  # sparse updates: Adam's dense ones cost seconds a step on 1M-item tables
    ranking_learning_rate: float = 0.1
    eval_max_pairs: int = 5_000  # the trainer's offline retrieval metrics scan the catalog once per test pair
    version: int = 5  # bump when the build itself changes (5: the ranker reads history, histories in time order)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def release_id(self) -> str:
        return f"bench-{self.key()}"

    def label(self) -> str:
        if self.dataset == SYNTHETIC:
            return f"synthetic {self.items} items, {self.users} users"
        return self.dataset


def cached(spec: BuildSpec, root: Path) -> bool:
    """Whether ``root`` holds the spec's published release as stable."""
    release = root / "releases" / spec.release_id()
    stable = root / "channels" / "stable"
    return (
        (release / "manifest.json").is_file() and stable.is_file() and stable.read_text().strip() == spec.release_id()
    )


def ensure_release(spec: BuildSpec, root: Path, log_path: Path, cache_dir: Path) -> tuple[str, dict]:
    """The spec's release id and its build record, building it in a child process unless ``root`` has it."""
    if not cached(spec, root):
        if root.exists():
            shutil.rmtree(root)  # a failed or interrupted build of this spec; the directory is the bench's own
        root.mkdir(parents=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "bench.build",
            "--spec",
            json.dumps(asdict(spec)),
            "--root",
            str(root),
            "--cache-dir",
            str(cache_dir),
        ]
        with open(log_path, "wb") as log:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not cached(spec, root):
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"building the release failed (exit {done.returncode}); log {log_path}:\n{tail}")
    record = json.loads((root / BUILD_JSON).read_text()) if (root / BUILD_JSON).is_file() else {}
    return spec.release_id(), record


def build(spec: BuildSpec, root: Path, cache_dir: Path) -> dict:
    """Generate or load the data, run trainer.pipeline with the spec's settings, record timings and metrics."""
    import funnel.tf  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)

    from bench.synthetic import SyntheticConfig, generate
    from funnel.data.loaders import load_dataset
    from trainer.index import IndexConfig
    from trainer.models import RetrievalConfig
    from trainer.pipeline import PipelineConfig, run
    from trainer.ranking import RankingConfig

    started = time.monotonic()
    if spec.dataset == SYNTHETIC:
        dataset = generate(
            SyntheticConfig(
                items=spec.items, users=spec.users, interactions_per_user=spec.interactions_per_user, seed=spec.seed
            )
        )
    else:
        dataset = load_dataset(spec.dataset, cache_dir)
    data_seconds = time.monotonic() - started
    config = PipelineConfig(
        artifact_root=root,
        data=spec.dataset,
        cache_dir=cache_dir,
        release_id=spec.release_id(),
        set_stable=True,
        gate=None,
        seed=spec.seed,
        eval_max_pairs=spec.eval_max_pairs,
        refit=False,  # speed, not quality: one training
        ranking=RankingConfig(
            epochs=spec.ranking_epochs,
            batch_size=spec.ranking_batch_size,
            optimizer=spec.ranking_optimizer,
            learning_rate=spec.ranking_learning_rate,
            seed=spec.seed,
        ),
        retrieval=RetrievalConfig(
            embedding_dim=spec.embedding_dim,
            epochs=spec.retrieval_epochs,
            batch_size=spec.retrieval_batch_size,
            seed=spec.seed,
        ),
        index=IndexConfig(min_recall=0.0, seed=spec.seed),  # the bench reports recall; it does not gate on it
    )
    result = run(config, dataset)
    record = {
        "spec": asdict(spec),
        "release_id": result.release_id,
        "dataset": dataset.name,
        "items": len(dataset.items),
        "users": int(len(set(dataset.interactions.user_ids.tolist()))),
        "interactions": len(dataset.interactions),
        "data_seconds": round(data_seconds, 2),
        "phase_seconds": {k: round(v, 2) for k, v in result.phase_seconds.items()},
        "build_seconds": round(time.monotonic() - started, 2),
        "metrics": result.metrics,
    }
    (root / BUILD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.build", description=__doc__)
    parser.add_argument("--spec", required=True, help="a BuildSpec as JSON")
    parser.add_argument("--root", required=True, type=Path, help="artifact root to publish into")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    spec = BuildSpec(**json.loads(args.spec))
    record = build(spec, args.root, args.cache_dir)
    print(json.dumps({k: record[k] for k in ("release_id", "items", "interactions", "build_seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
