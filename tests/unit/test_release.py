"""Release store: atomic publish, verification that refuses partial or tampered releases, channel pointers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from funnel.errors import InvalidArgument, NotFound, ReleaseError
from funnel.release.store import MANIFEST, ArtifactStore, RolloutState, validate_release_id
from tests.helpers import publish


def test_publish_writes_manifest_with_checksums_and_leaves_no_staging(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert publish(store) == "r1"
    manifest = json.loads((tmp_path / "releases" / "r1" / MANIFEST).read_text())
    assert set(manifest["files"]) == {"a.bin", "model/weights"}
    assert manifest["release_id"] == "r1" and manifest["metrics"] == {"m": 1.0}
    assert list(store.staging_dir.iterdir()) == []
    path, parsed = store.verify("r1")
    assert path == tmp_path / "releases" / "r1" and parsed.training_runs == {"retrieval": "run-1"}
    assert store.list_releases() == ["r1"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.new_release("r1") as writer:
        (writer.dir / "half").write_bytes(b"x")
        raise RuntimeError("training crashed")
    assert list(store.staging_dir.iterdir()) == [] and store.list_releases() == []


def test_publishing_an_existing_id_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish(store)
    with pytest.raises(InvalidArgument, match="already exists"):
        publish(store)


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.releases_dir / "partial").mkdir()
    (store.releases_dir / "partial" / "a.bin").write_bytes(b"alpha")
    with pytest.raises(ReleaseError, match="no manifest.json"):
        store.verify("partial")
    assert store.list_releases() == []


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda d: (d / "a.bin").write_bytes(b"alphA"), "checksum mismatch for a.bin"),
        (lambda d: (d / "model" / "weights").unlink(), "missing"),
        (lambda d: (d / "extra.bin").write_bytes(b"?"), "not in the manifest"),
        (lambda d: os.symlink("/etc/passwd", d / "link"), "symlink"),
    ],
)
def test_tampered_release_is_refused(tmp_path: Path, tamper, message: str) -> None:
    store = ArtifactStore(tmp_path)
    publish(store)
    tamper(store.releases_dir / "r1")
    with pytest.raises(ReleaseError, match=message):
        store.verify("r1")


def test_manifest_paths_cannot_escape(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish(store)
    manifest_path = store.releases_dir / "r1" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../outside"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ReleaseError, match="escapes"):
        store.verify("r1")


def test_manifest_for_another_release_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish(store)
    os.rename(store.releases_dir / "r1", store.releases_dir / "r2")
    with pytest.raises(ReleaseError, match="holds a manifest for 'r1'"):
        store.verify("r2")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "a..b", "x" * 200])
def test_release_ids_are_safe_names(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_release_id(bad)


def test_unknown_release_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        ArtifactStore(tmp_path).verify("nope")


def test_rollout_pointers_name_published_releases_only(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.rollout() == RolloutState()
    with pytest.raises(NotFound):
        store.set_stable("r1")
    publish(store, "r1")
    publish(store, "r2")
    store.set_stable("r1")
    store.set_candidate("r2", 0.25)
    assert store.rollout() == RolloutState("r1", "r2", 0.25)
    assert ArtifactStore(tmp_path).rollout() == RolloutState("r1", "r2", 0.25)  # a second reader agrees
    assert store.get_channel("candidate") == "r2"
    with pytest.raises(InvalidArgument, match="between 0 and 1, got 1.5"):
        store.set_candidate("r2", 1.5)
    with pytest.raises(InvalidArgument):
        store.get_channel("beta")
    store.clear_candidate()
    assert store.rollout() == RolloutState("r1")
    assert sorted(p.name for p in store.channels_dir.iterdir()) == ["stable"]  # no temp files left


def test_malformed_candidate_pointer_is_a_release_error(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.channels_dir / "candidate").write_text("{not json")
    with pytest.raises(ReleaseError, match="malformed candidate pointer"):
        store.rollout()
