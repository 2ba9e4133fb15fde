"""Test tiers and shared fixtures (the shared plain helpers are in tests/helpers.py).

Tiers, by directory, each test marked automatically:

- tests/unit: ``unit``, no TensorFlow, no servers, no processes (tests/unit/conftest.py guards the TensorFlow part);
- tests/servicer: ``servicer``, gRPC servers in this process, without TensorFlow;
- tests/model: TensorFlow models trained or loaded here (the trainer, and the stage servicers over a real release);
- tests/integration: ``integration``, separate processes (services, load generators, the trainer CLI).

``slow`` marks every test that needs TensorFlow: all of tests/model, and every test using a trained release
(`SLOW_FIXTURES`). ``make test-fast`` collects only the TensorFlow-free directories (unit, servicer, deploy), so it
never imports TensorFlow.

One real release is trained per session (`trained_root`); tests never write to it: each takes an artifact root of
its own holding a copy (`artifact_root`), and a module's shared servers get one of the module's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from funnel.release.store import ArtifactStore
from tests.helpers import (
    JOB_STABLE,
    RELEASE,
    ROOT,
    TEST_USERS,
    copy_release_root,
    synthetic_dataset,
    trainer_command,
)

TESTS = Path(__file__).resolve().parent
TIER_MARKERS = {
    "unit": ("unit",),
    "servicer": ("servicer",),
    "model": ("slow",),
    "integration": ("integration",),
    "compose": ("integration",),  # docker-compose: separate processes too
}
SLOW_FIXTURES = {"trained_root", "artifact_root", "module_artifact_root", "job_root", "job_store"}


# ---------------------------------------------------------------------------------------------------- tiers


def _tier(path: Path) -> tuple[str, ...]:
    try:
        relative = path.resolve().relative_to(TESTS)
    except ValueError:
        return ()
    return TIER_MARKERS.get(relative.parts[0], ()) if len(relative.parts) > 1 else ()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in _tier(item.path):
            item.add_marker(name)
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker("slow")


# ---------------------------------------------------------------------------------------- the trained release


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's source root: release ``test-r1``, trained by the real trainer CLI, stable. Read-only for tests
    (take `artifact_root` or `copy_release_root` to change anything); checked unchanged at the end.

    Set FUNNEL_TEST_ARTIFACTS to an artifact root holding ``test-r1`` to reuse it instead of training.
    """
    root = tmp_path_factory.mktemp("trained")
    reuse = os.environ.get("FUNNEL_TEST_ARTIFACTS")
    if reuse:
        copy_release_root(Path(reuse), root)
    else:
        subprocess.run(
            trainer_command(root, "--max-users", str(TEST_USERS), "--epochs", "2", "--release-id", RELEASE),
            cwd=ROOT,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    store = ArtifactStore(root)
    assert store.get_channel("stable") == RELEASE
    yield root
    assert store.list_releases() == [RELEASE] and store.rollout().stable == RELEASE, "a test changed trained_root"
    store.verify(RELEASE)  # every file as trained


@pytest.fixture
def artifact_root(trained_root: Path, tmp_path: Path) -> Path:
    """An artifact root of this test's own: a copy of release ``test-r1``, stable."""
    return copy_release_root(trained_root, tmp_path / "artifacts")


@pytest.fixture(scope="module")
def module_artifact_root(trained_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact root for one module's shared servers (a copy of ``test-r1``, stable). No test may change it: the
    module's tests share it; a test that publishes or moves a channel takes `artifact_root`."""
    return copy_release_root(trained_root, tmp_path_factory.mktemp("artifacts"))


# ---------------------------------------------------------------------------------------- the trainer job


@pytest.fixture(scope="session")
def job_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store bootstrapped by one trainer job run on `synthetic_dataset`: release stable-1, trained well enough to
    gate against, is stable. Read-only for tests: take `job_store`."""
    from funnel.release.store import RolloutState
    from tests.helpers import small_ranking_config, small_retrieval_config
    from trainer.pipeline import PipelineConfig, run

    root = tmp_path_factory.mktemp("job") / "store"
    config = PipelineConfig(
        root, release_id=JOB_STABLE, retrieval=small_retrieval_config(), ranking=small_ranking_config()
    )
    result = run(config, dataset=synthetic_dataset())
    assert result.stable and result.rollout is None and result.metrics["gate"] is None
    assert ArtifactStore(root).rollout() == RolloutState(JOB_STABLE)
    return root


@pytest.fixture
def job_store(job_root: Path, tmp_path: Path) -> ArtifactStore:
    """A private copy of the bootstrapped trainer-job store."""
    return ArtifactStore(shutil.copytree(job_root, tmp_path / "store"))


# ---------------------------------------------------------------------------------------- the funnel CLI


@pytest.fixture()
def cli_run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The funnel CLI's var/ in a temporary directory, with 'gateway' standing for a harmless python -m http.server;
    returns its run/ directory (the pid files)."""
    from funnel.cli import main as cli
    from funnel.cli import stack

    monkeypatch.setattr(cli, "VAR", tmp_path)
    monkeypatch.setitem(stack.MODULES, "gateway", "http.server")
    (tmp_path / "run").mkdir()
    return tmp_path / "run"
