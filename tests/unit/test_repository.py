"""The repository tracks code, not data: datasets are fetched by `make data`, releases made by the trainer."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from funnel.paths import PROJECT_ROOT

DATA_SUFFIXES = (".inter", ".item", ".user", ".whl", ".npz", ".npy", ".csv", ".zip")


@pytest.mark.skipif(shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists(), reason="not a git checkout")
def test_no_dataset_or_artifact_is_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    data = [path for path in tracked if path.endswith(DATA_SUFFIXES) or "/var/" in f"/{path}"]
    assert data == []
