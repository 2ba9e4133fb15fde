"""Command line: python -m trainer --artifact-root DIR [--only {index,ranker}] [--every SECONDS] ... (see --help)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from funnel.tf import tf

from funnel.data.loaders import DATASET_SPECS
from funnel.errors import DataError, FunnelError
from funnel.paths import ARTIFACT_ROOT_ENV, CACHE_ENV, default_cache_dir
from funnel.release.store import ArtifactStore, validate_fraction
from trainer.gate import GateConfig, GateRefused
from trainer.index import RecallTooLow
from trainer.models import RetrievalConfig
from trainer.pipeline import ONLY_CHOICES, PipelineConfig, RolloutRefused, run, time_agnostic
from trainer.ranking import RankingConfig
from trainer.split import RECENT_FRACTION, SPLITS

ADMIN_TARGET_ENV, ADMIN_TOKEN_ENV = "FUNNEL_ADMIN_TARGET", "FUNNEL_ADMIN_TOKEN"
EXIT_OK, EXIT_ERROR, EXIT_GATE_REFUSED, EXIT_ROLLOUT_REFUSED = 0, 1, 3, 4  # argparse exits 2 on a usage error

DESCRIPTION = """\
The trainer job: train -> evaluate the exported models on held-out data (by default each user's most recent
interactions) -> gate against the stable release -> train again on all the data -> publish -> start the rollout as
candidate. The release's seen items and stored histories always cover every interaction it was given. Runs once,
or every --every seconds until SIGTERM/SIGINT."""
EPILOG = f"""\
gate: the new (held-out) models and the stable release are both evaluated through their exported models on the
held-out interactions the stable release was not given (none when the data is the same: the gate then passes);
the new one is refused, and nothing is published, when
  recall@100       < stable recall@100       - --max-recall-drop     (default {GateConfig.max_recall_drop}, absolute)
  ranking RMSE     > stable ranking RMSE     + --max-rmse-increase (default {GateConfig.max_rmse_increase}, absolute)

after publishing: into a store without a stable release, the release becomes stable. With --set-stable beside a
stable release, the admin service (--admin-target) rolls it out and promotes it once every replica holds it; the
job refuses without an admin target (only the admin API changes stable on a live store). Else with an admin
target the admin service starts its rollout at --rollout-fraction; else the job prints the `funnel rollout start`
command.

exit status: {EXIT_OK} published (and rollout started if asked), {EXIT_ERROR} error, 2 usage error, \
{EXIT_GATE_REFUSED} refused by the gate,
{EXIT_ROLLOUT_REFUSED} published but the admin service refused the rollout. With --every: {EXIT_OK} once stopped."""


def _fraction(text: str) -> float:
    try:
        return validate_fraction(float(text))
    except (ValueError, FunnelError) as exc:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from exc


def _first_set(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[PipelineConfig, float | None]:
    """(job config, --every seconds or None); flags first, then the FUNNEL_* environment, then defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact-root", default=environ.get(ARTIFACT_ROOT_ENV), help=f"artifact store root [env {ARTIFACT_ROOT_ENV}]"
    )
    parser.add_argument("--data", default="movielens-100k", help=f"dataset spec: {DATASET_SPECS}")
    parser.add_argument(
        "--cache-dir", default=default_cache_dir(environ), help=f"dataset download cache [env {CACHE_ENV}]"
    )
    parser.add_argument("--epochs", type=int, help="training epochs of both models (default: each model's own)")
    parser.add_argument(
        "--retrieval-epochs", type=int, help=f"retrieval model epochs (default --epochs, else {RetrievalConfig.epochs})"
    )
    parser.add_argument(
        "--ranking-epochs", type=int, help=f"ranking model epochs (default --epochs, else {RankingConfig.epochs})"
    )
    parser.add_argument("--max-users", type=int, help="train on the interactions of this many users only")
    parser.add_argument("--release-id", help="release id (default: UTC timestamp and random suffix)")
    parser.add_argument(
        "--only",
        choices=ONLY_CHOICES,
        help="rebuild only this part of the stable release into a new one: 'ranker' retrains the ranking model, "
        "'index' re-indexes the catalog with the stable candidate tower; the other parts are copied "
        "(default: train both models)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=PipelineConfig.split,
        help="the held-out part the models are evaluated and gated on: 'recent' holds out each user's most recent "
        f"{RECENT_FRACTION:.0%} of interactions (default), 'seeds' the TFRS tutorials' seeded shuffle, 'temporal' "
        "everything after one global time cut",
    )
    parser.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="publish the evaluated models, trained without the held-out part (default: after the gate, train again "
        "on every interaction with the same settings and publish those)",
    )
    parser.add_argument(
        "--no-recency",
        dest="recency",
        action="store_false",
        help="for data whose order means nothing: both models read the history as a set, and the ranker alone orders "
        "the candidates (default: the latest items weigh most, and the order blends ranker and retrieval scores)",
    )
    parser.add_argument("--no-gate", action="store_true", help="publish without comparing to the stable release")
    parser.add_argument(
        "--max-recall-drop",
        type=float,
        default=GateConfig.max_recall_drop,
        metavar="X",
        help="gate: largest allowed fall in retrieval recall@100, seen items excluded, vs stable (default %(default)s)",
    )
    parser.add_argument(
        "--max-rmse-increase",
        type=float,
        default=GateConfig.max_rmse_increase,
        metavar="X",
        help="gate: largest allowed rise in ranking RMSE vs stable (default %(default)s)",
    )
    parser.add_argument(
        "--set-stable",
        action=argparse.BooleanOptionalAction,
        help="make the new release stable instead of starting a partial rollout: directly into an empty store, "
        "else through --admin-target (promoted once every replica holds it) (default: only into an empty store)",
    )
    parser.add_argument(
        "--admin-target",
        default=environ.get(ADMIN_TARGET_ENV),
        help=f"gateway AdminService host:port that starts the rollout [env {ADMIN_TARGET_ENV}]",
    )
    parser.add_argument(
        "--unless-stable",
        action="store_true",
        help="exit at once, successfully, when the store already has a stable release: a first-boot job that never "
        "retrains by accident",
    )
    parser.add_argument("--admin-token", default=environ.get(ADMIN_TOKEN_ENV), help=f"[env {ADMIN_TOKEN_ENV}]")
    parser.add_argument(
        "--rollout-fraction", type=_fraction, default=0.1, help="candidate traffic share to start at (default 0.1)"
    )
    parser.add_argument("--every", type=float, metavar="SECONDS", help="run again SECONDS after each run ends")
    args = parser.parse_args(argv)
    if not args.artifact_root:
        parser.error(f"missing artifact root: pass --artifact-root or set {ARTIFACT_ROOT_ENV}")
    for name in ("max_users", "every"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"expected --{name.replace('_', '-')} > 0, got {value}")
    try:
        retrieval = RetrievalConfig(epochs=_first_set(args.retrieval_epochs, args.epochs, RetrievalConfig.epochs))
        ranking = RankingConfig(epochs=_first_set(args.ranking_epochs, args.epochs, RankingConfig.epochs))
        gate = None if args.no_gate else GateConfig(args.max_recall_drop, args.max_rmse_increase)
    except ValueError as exc:
        parser.error(str(exc))
    config = PipelineConfig(
        artifact_root=Path(args.artifact_root),
        data=args.data,
        cache_dir=Path(args.cache_dir),
        max_users=args.max_users,
        split=args.split,
        refit=args.refit,
        release_id=args.release_id,
        set_stable=args.set_stable,
        unless_stable=args.unless_stable,
        only=args.only,
        gate=gate,
        admin_target=args.admin_target,
        admin_token=args.admin_token,
        rollout_fraction=args.rollout_fraction,
        retrieval=retrieval,
        ranking=ranking,
    )
    return (config if args.recency else time_agnostic(config)), args.every


def run_once(config: PipelineConfig) -> int:
    """One job run; the exit status, with the reason on stderr when it is not EXIT_OK."""
    if config.unless_stable:
        stable = ArtifactStore(config.artifact_root).get_channel("stable")
        if stable is not None:
            print(f"trainer: {config.artifact_root} has stable release {stable}; nothing to do", flush=True)
            return EXIT_OK
    try:
        run(config)
    except GateRefused as exc:
        print(f"trainer: {exc}", file=sys.stderr, flush=True)
        return EXIT_GATE_REFUSED
    except RolloutRefused as exc:
        print(f"trainer: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ROLLOUT_REFUSED
    except (DataError, FunnelError, RecallTooLow, OSError) as exc:
        print(f"trainer: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return EXIT_OK


def run_every(job: Callable[[], int], interval: float, stop: threading.Event) -> int:
    """Run ``job``, then wait ``interval`` seconds, until ``stop`` is set; returns the number of runs.

    A run that fails (non-zero status or an exception) is logged and the loop goes on; ``stop`` is checked
    between runs, so a run in progress always finishes.
    """
    runs = 0
    while not stop.is_set():
        runs += 1
        try:
            status = job()
        except Exception:  # a scheduled job outlives a bad run; the traceback is logged
            traceback.print_exc()
            status = EXIT_ERROR
        print(f"[trainer] run {runs} ended with status {status}; next in {interval:g} s unless stopped", flush=True)
        stop.wait(interval)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    config, every = parse_args(argv)
    if every is None:
        return run_once(config)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        print(f"[trainer] {signal.Signals(signum).name}: stopping after the current run", flush=True)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)

    def job() -> int:
        tf.keras.backend.clear_session()  # models of earlier runs must not accumulate in a long-lived process
        return run_once(config)

    runs = run_every(job, every, stop)
    print(f"[trainer] stopped after {runs} runs", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
