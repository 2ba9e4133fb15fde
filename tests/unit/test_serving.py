"""ReleaseManager: loads what channels name, refuses bad releases while the last good one keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from funnel.errors import FailedPrecondition, NotFound, ReleaseError, Unavailable
from funnel.release.store import ArtifactStore, Manifest
from funnel.serving.manager import LoadState, ReleaseManager
from tests.helpers import publish


class FakeRelease:
    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.release_id = manifest.release_id
        if (path / "refuse").exists():
            raise ReleaseError(f"{self.release_id}: fingerprint mismatch")
        self.warm = False


def make(tmp_path: Path, warmup=lambda r: setattr(r, "warm", True)) -> tuple[ArtifactStore, ReleaseManager, list]:
    store = ArtifactStore(tmp_path)
    readiness: list[bool] = []
    manager = ReleaseManager(store, FakeRelease, warmup, name="test")
    manager.subscribe(readiness.append)
    return store, manager, readiness


def test_not_ready_until_stable_is_loaded_and_warm(tmp_path: Path) -> None:
    store, manager, readiness = make(tmp_path)
    manager.sync()
    assert readiness and not any(readiness) and not manager.ready()
    with pytest.raises(Unavailable):
        manager.get("r1")
    publish(store, "r1")
    store.set_stable("r1")
    manager.sync()
    assert readiness[-1] is True and manager.channel("stable") == "r1"
    assert manager.get("r1").warm


def test_bad_release_is_refused_and_last_good_keeps_serving(tmp_path: Path) -> None:
    store, manager, _ = make(tmp_path)
    publish(store, "r1")
    store.set_stable("r1")
    manager.sync()
    publish(store, "r2")
    (store.releases_dir / "r2" / "a.bin").write_bytes(b"corrupted")
    store.set_stable("r2")
    manager.sync()
    assert manager.channel("stable") == "r1" and manager.ready()
    assert manager.get("r1").release_id == "r1"
    with pytest.raises(FailedPrecondition, match="checksum mismatch"):
        manager.get("r2")
    states = {s.release_id: s for s in manager.status()}
    assert states["r1"].state == LoadState.READY and states["r1"].channels == ("stable",)
    assert states["r2"].state == LoadState.FAILED and "checksum mismatch" in states["r2"].error
    publish(store, "r3")
    store.set_stable("r3")
    manager.sync()
    assert manager.channel("stable") == "r3" and manager.loaded_ids() == ["r3"]  # r1 dropped once unneeded


def test_loader_and_warmup_failures_refuse_the_release(tmp_path: Path) -> None:
    store, manager, _ = make(tmp_path, warmup=lambda r: (_ for _ in ()).throw(RuntimeError("warm-up query failed")))
    publish(store, "r1")
    store.set_stable("r1")
    manager.sync()
    assert not manager.ready()
    assert "warm-up query failed" in manager.status()[0].error
    store2, manager2, _ = make(tmp_path / "other")
    publish(store2, "r1", {"refuse": b"1"})
    store2.set_stable("r1")
    manager2.sync()
    assert not manager2.ready() and "fingerprint mismatch" in manager2.status()[0].error


def test_unknown_and_unloaded_releases(tmp_path: Path) -> None:
    store, manager, _ = make(tmp_path)
    publish(store, "r1")
    publish(store, "r2")
    store.set_stable("r1")
    manager.sync()
    with pytest.raises(NotFound):
        manager.get("r9")
    with pytest.raises(FailedPrecondition, match="not loaded"):
        manager.get("r2")


def test_candidate_loads_beside_stable_and_is_dropped_when_cleared(tmp_path: Path) -> None:
    store, manager, _ = make(tmp_path)
    publish(store, "r1")
    publish(store, "r2")
    store.set_stable("r1")
    store.set_candidate("r2", 0.5)
    manager.sync()
    assert sorted(manager.loaded_ids()) == ["r1", "r2"] and manager.channel("candidate") == "r2"
    store.clear_candidate()
    manager.sync()
    assert manager.loaded_ids() == ["r1"] and manager.channel("candidate") is None


def test_channel_changes_apply_while_a_slow_load_runs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    loading, gate, finished = threading.Event(), threading.Event(), threading.Event()

    def load(path: Path, manifest: Manifest) -> FakeRelease:
        if manifest.release_id == "r3":
            loading.set()
            gate.wait(60)  # held until the test lets it go (60 s: only a hang guard)
            finished.set()
        return FakeRelease(path, manifest)

    manager = ReleaseManager(store, load, name="test")
    for r in ("r1", "r2", "r3"):
        publish(store, r)
    store.set_stable("r1")
    store.set_candidate("r2", 0.5)
    manager.sync()
    assert manager.candidate_fraction() == 0.5
    store.set_candidate("r3", 0.5)  # a new candidate, slow to load
    loader = threading.Thread(target=manager.sync)
    loader.start()
    try:
        assert loading.wait(10), "the load of r3 did not start"
        assert any(s.release_id == "r3" and s.state == LoadState.LOADING for s in manager.status())
        store.clear_candidate()  # the operator rolls back meanwhile
        assert manager.refresh() == []
        assert not finished.is_set(), "refresh waited for the load"  # the load is still held: refresh did not wait
        assert manager.channel("stable") == "r1" and manager.candidate_fraction() == 0.0
    finally:
        gate.set()
        loader.join(10)
    assert finished.is_set() and manager.loaded_ids() == ["r1"]  # r3 finished loading but nothing needs it


def test_never_more_than_two_releases_resident(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    peaks: list[int] = []
    manager: ReleaseManager

    def load(path: Path, manifest: Manifest) -> FakeRelease:
        peaks.append(len(manager.loaded_ids()) + 1)  # resident ones plus the one being loaded
        return FakeRelease(path, manifest)

    manager = ReleaseManager(store, load, name="test")
    for r in ("r1", "r2", "r3", "r4"):
        publish(store, r)
    store.set_stable("r1")
    store.set_candidate("r2", 0.1)
    manager.sync()
    store.set_candidate("r3", 0.1)  # a new candidate replaces the old one
    manager.sync()
    store.set_stable("r4")  # stable moves to an unloaded release while a candidate is resident
    manager.sync()
    assert max(peaks) == 2 and len(peaks) >= 5
    assert manager.channel("stable") == "r4" and manager.channel("candidate") == "r3"


def test_candidate_fraction_only_for_a_served_candidate(tmp_path: Path) -> None:
    store, manager, _ = make(tmp_path)
    publish(store, "r1")
    publish(store, "r2")
    (store.releases_dir / "r2" / "a.bin").write_bytes(b"corrupted")
    store.set_stable("r1")
    store.set_candidate("r2", 0.5)
    manager.sync()
    assert manager.channel("candidate") is None and manager.candidate_fraction() == 0.0
