"""Trainer job tests: the publish gate, --only rebuilds, bootstrap, the scheduler, what a release saw (the rollout
through an admin service is in tests/model/test_trainer_rollout.py)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from dataclasses import replace

import pytest

from funnel.errors import ReleaseError
from funnel.release.files import read_seen
from funnel.release.retrieval import Query, RetrievalRelease
from funnel.release.store import (
    CANDIDATE_TOWER_DIR,
    INDEX_DIR,
    QUERY_TOWER_DIR,
    RANKER_DIR,
    ArtifactStore,
)
from tests.helpers import (
    JOB_STABLE,
    clone_release,
    csv_spec,
    small_ranking_config,
    small_retrieval_config,
    synthetic_dataset,
)
from trainer import __main__ as cli
from trainer.evaluate import Evaluation
from trainer.gate import GateConfig, GateRefused, check_gate
from trainer.pipeline import PipelineConfig, run
from trainer.split import make_split

STABLE = JOB_STABLE
RANKING_CONFIG, RETRIEVAL_CONFIG = small_ranking_config(), small_retrieval_config()


@pytest.fixture
def store(job_store: ArtifactStore) -> ArtifactStore:
    """A private copy of the store one trainer job run bootstrapped (tests/conftest.py: job_root)."""
    return job_store


NEW_DATA = synthetic_dataset(later=8)  # the stable release's data and 8 newer ratings per user


def _channels(store: ArtifactStore) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.channels_dir.iterdir()}


def _same_files(store: ArtifactStore, release_id: str, parts: tuple[str, ...]) -> None:
    """The parts of ``release_id`` are byte-identical to the stable release's (by the manifests' sha256)."""
    stable, new = store.read_manifest(STABLE).files, store.read_manifest(release_id).files
    for part in parts:
        expected = {rel: sha for rel, sha in stable.items() if rel.startswith(part + "/")}
        assert expected and {rel: sha for rel, sha in new.items() if rel.startswith(part + "/")} == expected, part


# ---------------------------------------------------------------------------------------------------- gate


def _evaluation(recall_100: float, rmse: float) -> Evaluation:
    recall = {"top_1": 0.01, "top_5": 0.05, "top_10": 0.1, "top_50": 0.3, "top_100": recall_100}
    return Evaluation({k: v / 2 for k, v in recall.items()}, recall, rmse)


def test_gate_passes_within_tolerance_and_records_both_sides():
    new, stable = _evaluation(0.4950, 1.1300), _evaluation(0.5000, 1.1125)
    record = check_gate(new, stable, "r0", GateConfig())
    assert record == {
        "stable_release_id": "r0",
        "stable": stable.as_metrics(),
        "new": new.as_metrics(),
        "tolerance": {"max_recall_drop": 0.01, "max_rmse_increase": 0.02},
        "passed": True,
    }


def test_gate_refuses_naming_each_metric_its_values_difference_and_tolerance():
    with pytest.raises(GateRefused) as refused:
        check_gate(_evaluation(0.5, 1.1402), _evaluation(0.5, 1.1125), "r0", GateConfig())
    assert str(refused.value) == "refused: ranking RMSE 1.1402 is 0.0277 worse than stable 1.1125 (tolerance 0.0200)"
    assert refused.value.record["passed"] is False
    with pytest.raises(GateRefused) as refused:
        check_gate(_evaluation(0.4700, 1.2), _evaluation(0.5000, 1.1), "r0", GateConfig(0.02, 0.05))
    assert str(refused.value) == (
        "refused: retrieval recall@100 0.4700 is 0.0300 worse than stable 0.5000 (tolerance 0.0200); "
        "ranking RMSE 1.2000 is 0.1000 worse than stable 1.1000 (tolerance 0.0500)"
    )


def test_cli_gate_refusal_exits_3_and_publishes_nothing(store, tmp_path, capsys):
    before = store.list_releases()
    argv = [
        "--artifact-root",
        str(store.root),
        "--data",
        csv_spec(NEW_DATA, tmp_path),
        "--only",
        "ranker",
        "--epochs",
        "1",
    ]
    assert cli.main(argv) == cli.EXIT_GATE_REFUSED  # two steps of the default ranker are far worse than stable
    err = capsys.readouterr().err
    assert err.startswith("trainer: refused: ranking RMSE ") and "worse than stable" in err
    assert err.endswith("(tolerance 0.0200)\n") and "recall@100" not in err  # the retrieval parts are stable's
    assert store.list_releases() == before and not list(store.staging_dir.iterdir())


# ---------------------------------------------------------------------------------------------------- --only


def test_only_ranker_without_gate_copies_retrieval_and_leaves_channels_alone(store, capsys):
    channels = _channels(store)
    ranking = replace(RANKING_CONFIG, epochs=1)
    config = PipelineConfig(store.root, only="ranker", gate=None, release_id="r-ranker", ranking=ranking)
    result = run(config, dataset=synthetic_dataset())
    assert not result.stable and result.rollout is None and result.metrics["gate"] is None
    store.verify("r-ranker")
    _same_files(store, "r-ranker", (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, INDEX_DIR))
    stable_runs, manifest = store.read_manifest(STABLE).training_runs, store.read_manifest("r-ranker")
    assert manifest.training_runs["retrieval"] == stable_runs["retrieval"]
    assert manifest.training_runs["ranking"] not in ("", stable_runs["ranking"])
    assert (manifest.config["only"], manifest.config["base_release"]) == ("ranker", STABLE)
    assert manifest.config["gate"] is None
    assert _channels(store) == channels  # no admin target: publish only
    assert "funnel rollout start r-ranker --fraction 0.1" in capsys.readouterr().out


def test_only_index_reindexes_with_the_stable_towers_and_passes_the_gate(store):
    result = run(PipelineConfig(store.root, only="index", release_id="r-index"), dataset=NEW_DATA)
    store.verify("r-index")
    _same_files(store, "r-index", (QUERY_TOWER_DIR, CANDIDATE_TOWER_DIR, RANKER_DIR))
    manifest = store.read_manifest("r-index")
    assert manifest.training_runs == store.read_manifest(STABLE).training_runs
    assert (manifest.config["only"], manifest.config["base_release"]) == ("index", STABLE)
    gate = result.metrics["gate"]
    assert gate["passed"] and gate["stable_release_id"] == STABLE and gate["new"] == gate["stable"]  # same models
    # Compared on the held-out ratings the stable release was not given: each user's latest 7 of 38, all newer
    # than the stable data, less the pairs the user had rated before.
    held_out = NEW_DATA.interactions.take(make_split("recent", NEW_DATA.interactions)[1])
    before = synthetic_dataset().interactions
    old_pairs = set(zip(before.user_ids.tolist(), before.item_ids.tolist()))
    fresh = [(u, i) not in old_pairs for u, i in zip(held_out.user_ids.tolist(), held_out.item_ids.tolist())]
    assert len(held_out) == 420 and gate["compared_pairs"] == sum(fresh) > 100


def test_only_and_the_gate_need_a_stable_release_with_a_candidate_tower(store, tmp_path):
    with pytest.raises(ReleaseError, match=r"--only index rebuilds part of the stable release, but channel stable"):
        run(PipelineConfig(tmp_path / "empty", only="index"), dataset=synthetic_dataset())
    clone_release(store, STABLE, "old", lambda d: shutil.rmtree(d / CANDIDATE_TOWER_DIR))
    store.set_stable("old")
    with pytest.raises(ReleaseError, match=r"--only index: expected stable release old to hold candidate_tower/"):
        run(PipelineConfig(store.root, only="index"), dataset=synthetic_dataset())
    with pytest.raises(ReleaseError, match=r"the gate: expected .* candidate_tower/, .*; pass --no-gate"):
        run(PipelineConfig(store.root), dataset=synthetic_dataset())  # fails before training
    assert not list(store.staging_dir.iterdir())


# ---------------------------------------------------------------------------------------------------- schedule


def test_scheduler_keeps_running_after_failed_runs_until_stopped(capsys):
    stop, calls = threading.Event(), []

    def job() -> int:
        calls.append(len(calls) + 1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        if len(calls) == 4:
            stop.set()
        return {1: 0, 3: cli.EXIT_GATE_REFUSED, 4: 0}[len(calls)]

    assert cli.run_every(job, 0.01, stop) == 4 and len(calls) == 4
    captured = capsys.readouterr()
    assert "RuntimeError: disk full" in captured.err
    assert [line.split(" ended with status ")[1][0] for line in captured.out.splitlines()] == ["0", "1", "3", "0"]


def test_every_stops_cleanly_after_the_run_in_progress_on_sigterm(monkeypatch, tmp_path):
    runs: list[PipelineConfig] = []

    def fake_run_once(config: PipelineConfig) -> int:
        runs.append(config)
        if len(runs) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run; the run still completes
        return 0

    monkeypatch.setattr(cli, "run_once", fake_run_once)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert cli.main(["--artifact-root", str(tmp_path), "--every", "0.01"]) == cli.EXIT_OK
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert len(runs) == 2


# ---------------------------------------------------------------------------------------------------- what it saw


def _rated(data) -> dict[str, set[int]]:
    rated: dict[str, set[int]] = {}
    for user, item in zip(data.interactions.user_ids.tolist(), data.interactions.item_ids.tolist()):
        rated.setdefault(user, set()).add(item)
    return rated


def test_a_csv_release_never_recommends_an_item_its_user_rated(tmp_path):
    """Every interaction the trainer was given, held-out part included, is excluded for every user."""
    root = tmp_path / "store"
    argv = [
        "--artifact-root",
        str(root),
        "--data",
        csv_spec(NEW_DATA, tmp_path),
        "--epochs",
        "1",
        "--release-id",
        "csv",
    ]
    assert cli.main(argv) == cli.EXIT_OK
    release = RetrievalRelease(*ArtifactStore(root).verify("csv"))
    rated = _rated(NEW_DATA)
    users = sorted(rated)
    found = release.retrieve_batch([Query(user, 60, exclude_seen=True) for user in users])
    assert all(len(c.item_ids) == min(60, 80 - len(rated[user])) for user, c in zip(users, found))
    assert not any(rated[user] & set(c.item_ids.tolist()) for user, c in zip(users, found))
    assert all(not c.cold_start for c in found)


def test_no_refit_publishes_the_evaluated_models_with_every_interaction_as_seen(tmp_path):
    config = PipelineConfig(
        tmp_path / "store",
        refit=False,
        retrieval=replace(RETRIEVAL_CONFIG, epochs=1),
        ranking=replace(RANKING_CONFIG, epochs=1),
    )
    result = run(config, dataset=NEW_DATA)
    assert [name for name in result.phase_seconds if "refit" in name] == []
    assert result.metrics["trained_on"] == {"interactions": 1860, "users": 60, "until_timestamp": 2272, "refit": False}
    assert (result.metrics["num_train"], result.metrics["num_test"]) == (1860, 420)
    seen = read_seen(ArtifactStore(tmp_path / "store").release_dir(result.release_id))
    assert seen.contains(NEW_DATA.interactions.user_ids, NEW_DATA.interactions.item_ids).all()
