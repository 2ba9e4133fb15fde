"""Shared fixtures: one small release trained once per session on a real MovieLens 100K subset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from funnel.paths import default_cache_dir
from funnel.release.store import MANIFEST, ArtifactStore

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = default_cache_dir()
RELEASE = "test-r1"
TEST_USERS = 200  # the 200 lowest user ids of MovieLens 100K: ~20k ratings, trains in seconds


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact root whose stable channel points at release ``test-r1``, trained by the real trainer CLI.

    Set FUNNEL_TEST_ARTIFACTS to an artifact root holding ``test-r1`` to reuse it instead of training.
    """
    root = tmp_path_factory.mktemp("artifacts")
    reuse = os.environ.get("FUNNEL_TEST_ARTIFACTS")
    if reuse:
        shutil.copytree(Path(reuse) / "releases" / RELEASE, ArtifactStore(root).releases_dir / RELEASE)
        ArtifactStore(root).set_stable(RELEASE)
        return root
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--artifact-root",
            str(root),
            "--data",
            "movielens-100k",
            "--cache-dir",
            str(CACHE_DIR),
            "--max-users",
            str(TEST_USERS),
            "--epochs",
            "2",
            "--release-id",
            RELEASE,
        ],
        cwd=ROOT,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert ArtifactStore(root).get_channel("stable") == RELEASE
    return root


def clone_release(store: ArtifactStore, source: str, target: str, mutate: Callable[[Path], None]) -> str:
    """Publish a copy of ``source`` as ``target`` after ``mutate`` edits its files (checksums recomputed)."""
    manifest = store.read_manifest(source)
    with store.new_release(target) as writer:
        shutil.copytree(
            store.release_dir(source), writer.dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST)
        )
        mutate(writer.dir)
        return writer.publish(
            training_runs=manifest.training_runs,
            data_fingerprint=manifest.data_fingerprint,
            metrics=manifest.metrics,
            config=manifest.config,
        )
