"""Command line: python -m trainer --artifact-root DIR [--data SPEC] [--epochs N] ... (see --help)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from funnel.data import DATASET_SPECS
from funnel.errors import DataError, FunnelError
from trainer.index import RecallTooLow
from trainer.models import TrainConfig
from trainer.pipeline import PipelineConfig, run

ROOT_ENV, CACHE_ENV = "FUNNEL_ARTIFACT_ROOT", "FUNNEL_CACHE_DIR"


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> PipelineConfig:
    """Flags first, then FUNNEL_ARTIFACT_ROOT / FUNNEL_CACHE_DIR, then defaults."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split(":")[0])
    parser.add_argument("--artifact-root", default=environ.get(ROOT_ENV), help=f"artifact store root [env {ROOT_ENV}]")
    parser.add_argument("--data", default="movielens-100k", help=f"dataset spec: {DATASET_SPECS}")
    parser.add_argument(
        "--cache-dir", default=environ.get(CACHE_ENV, "var/cache"), help=f"dataset download cache [env {CACHE_ENV}]"
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs for both models")
    parser.add_argument("--max-users", type=int, help="train on the interactions of this many users only")
    parser.add_argument("--release-id", help="release id (default: UTC timestamp and random suffix)")
    parser.add_argument(
        "--set-stable",
        action=argparse.BooleanOptionalAction,
        help="point channel stable at the new release (default: only if no stable release exists yet)",
    )
    args = parser.parse_args(argv)
    if not args.artifact_root:
        parser.error(f"missing artifact root: pass --artifact-root or set {ROOT_ENV}")
    if args.max_users is not None and args.max_users < 1:
        parser.error(f"expected --max-users >= 1, got {args.max_users}")
    try:
        train = TrainConfig(epochs=args.epochs)
    except ValueError as exc:
        parser.error(str(exc))
    return PipelineConfig(
        artifact_root=Path(args.artifact_root),
        data=args.data,
        cache_dir=Path(args.cache_dir),
        max_users=args.max_users,
        release_id=args.release_id,
        set_stable=args.set_stable,
        train=train,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run(config)
    except (DataError, FunnelError, RecallTooLow) as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
