"""Unit tests for funnel.data.movielens: fetching, verifying and caching MovieLens 100K from the recbole wheel."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from funnel import paths
from funnel.data import loaders as data
from funnel.data import movielens as datasets
from funnel.errors import DataError

FAKE_FILES = {"ml-100k.inter": b"inter\n", "ml-100k.item": b"item\n", "ml-100k.user": b"user\n"}


def _no_pip(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"pip must not run when the cache is valid: {args}")


def test_real_movielens_100k(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one test on the real data: fetched once into the session cache, then served from it without pip."""
    cache_dir = datasets.default_cache_dir()  # $FUNNEL_CACHE_DIR, else <project>/var/cache (git-ignored)
    directory = datasets.fetch_movielens_100k(cache_dir)
    assert directory == cache_dir / "ml-100k"
    assert sorted(p.name for p in directory.iterdir()) == sorted(datasets.EXPECTED_SHA256)

    ds = data.load_recbole_ml100k(directory)
    assert len(ds.interactions) == 100_000
    assert ds.users is not None and len(ds.users) == 943
    assert len(set(ds.interactions.user_ids.tolist())) == 943
    assert len(ds.items) == 1_682
    inter = ds.interactions
    assert (inter.user_ids[0], inter.item_ids[0], inter.ratings[0], inter.timestamps[0]) == ("196", 242, 3.0, 881250949)
    toy_story = ds.items.item_ids.tolist().index(1)
    assert (ds.items.titles[toy_story], ds.items.years[toy_story]) == ("Toy Story", 1995)
    assert ds.fingerprint() == "919548d2b9cbb4f1bf4846cb9b38feabcca88306919cb175e2304d6673032c69"

    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert datasets.fetch_movielens_100k(cache_dir) == directory


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace pip with a stand-in that writes a small fake recbole wheel; returns the commands it ran."""
    monkeypatch.setattr(datasets, "EXPECTED_SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in FAKE_FILES.items()})
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        assert kwargs["check"] is True and kwargs["stdin"] is subprocess.DEVNULL
        wheels = Path(command[command.index("-d") + 1])
        wheels.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels / "recbole-1.2.1-py3-none-any.whl", "w") as wheel:
            for name, content in FAKE_FILES.items():
                wheel.writestr(datasets.WHEEL_MEMBER_DIR + name, content)
            wheel.writestr(datasets.WHEEL_MEMBER_DIR + "ml-100k.kg", b"not wanted")
            wheel.writestr("../escape.txt", b"must not be written")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_fetch_extracts_only_the_three_files_and_refetches_a_corrupt_one(
    tmp_path: Path, fake_pip: list[list[str]]
) -> None:
    cache = tmp_path / "cache"
    directory = datasets.fetch_movielens_100k(cache)

    assert len(fake_pip) == 1
    assert fake_pip[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "recbole==1.2.1",
        "-d",
        str(cache / "wheels"),
    ]
    assert sorted(p.name for p in directory.iterdir()) == sorted(FAKE_FILES)
    assert {name: (directory / name).read_bytes() for name in FAKE_FILES} == FAKE_FILES
    assert not list(tmp_path.rglob("escape.txt"))

    datasets.fetch_movielens_100k(cache)
    assert len(fake_pip) == 1  # valid cache: no download

    (directory / "ml-100k.item").write_bytes(b"corrupted\n")
    assert datasets.fetch_movielens_100k(cache) == directory
    assert len(fake_pip) == 2
    assert (directory / "ml-100k.item").read_bytes() == FAKE_FILES["ml-100k.item"]


def test_fetch_reports_a_checksum_mismatch(
    tmp_path: Path, fake_pip: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = "0" * 64
    monkeypatch.setitem(datasets.EXPECTED_SHA256, "ml-100k.user", expected)
    with pytest.raises(DataError) as info:
        datasets.fetch_movielens_100k(tmp_path)
    message = str(info.value)
    assert "ml-100k.user" in message and expected in message
    assert hashlib.sha256(FAKE_FILES["ml-100k.user"]).hexdigest() in message
    assert not (tmp_path / "ml-100k" / "ml-100k.user").exists()
    assert not list((tmp_path / "ml-100k").glob("*.tmp"))


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], **kwargs: Any) -> None:
        raise subprocess.CalledProcessError(1, command, "", "ERROR: No matching distribution found for recbole==1.2.1")

    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="exit code 1: ERROR: No matching distribution found"):
        datasets.fetch_movielens_100k(tmp_path)


def test_cli_prints_the_directory(
    tmp_path: Path, fake_pip: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    datasets.main(["--cache-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'ml-100k'}\n"
    assert "downloading recbole==1.2.1" in captured.err


def test_default_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNNEL_CACHE_DIR", str(tmp_path))
    assert datasets.default_cache_dir() == tmp_path
    monkeypatch.delenv("FUNNEL_CACHE_DIR")
    assert datasets.default_cache_dir() == paths.PROJECT_ROOT / "var" / "cache"
    assert (paths.PROJECT_ROOT / "Makefile").is_file()  # the checkout, wherever the module sits in it
