"""The artifact store: immutable releases published by atomic rename, verified on load, and channel pointers."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from funnel.errors import InvalidArgument, NotFound, ReleaseError
from funnel.fsutil import atomic_write_text, fsync_path, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
QUERY_TOWER_DIR = "query_tower"
RANKER_DIR = "ranker"
INDEX_DIR = "index"
CANDIDATE_TOWER_DIR = "candidate_tower"
SIDECAR = "assets.extra/funnel.json"  # per-SavedModel metadata, TF Serving's assets.extra convention

RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # fullmatch: `$` alone lets "r1\n" through
CHANNELS = ("stable", "candidate")


def validate_release_id(release_id: str) -> str:
    """Return ``release_id`` if it is a safe directory name, else raise InvalidArgument."""
    if not isinstance(release_id, str) or not RELEASE_ID_RE.fullmatch(release_id) or ".." in release_id:
        raise InvalidArgument(f"release id must match {RELEASE_ID_RE.pattern} without '..', got {release_id!r}")
    return release_id


def new_release_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique release id: UTC timestamp plus random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def validate_fraction(value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:  # no float() first: 10**400 overflows it
        raise InvalidArgument(f"candidate fraction must be between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RolloutState:
    """Which release serves stable traffic, and which (if any) serves a sticky fraction of users as candidate."""

    stable: str | None = None
    candidate: str | None = None
    fraction: float = 0.0


def _walk_files(root: Path) -> dict[str, Path]:
    """Every regular file below ``root`` by POSIX relative path; refuses symlinks and special files."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise ReleaseError(f"{root.name}: symlink {rel!r} is not allowed in a release")
            if name in filenames:
                if not stat.S_ISREG(mode):
                    raise ReleaseError(f"{root.name}: {rel!r} is not a regular file")
                found[rel] = path
    return found


def _check_relpath(rel: str, release_id: str) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ReleaseError(f"release {release_id}: manifest path {rel!r} escapes the release directory")


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a release."""

    release_id: str
    created_at: str
    schema_version: int
    training_runs: dict[str, str]
    data_fingerprint: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    files: dict[str, str]

    @classmethod
    def from_json(cls, data: Any, release_id: str) -> Manifest:
        if not isinstance(data, dict):
            raise ReleaseError(f"release {release_id}: manifest must be a JSON object, got {type(data).__name__}")
        schema_version = data.get("schema_version")
        if type(schema_version) is not int or schema_version != SCHEMA_VERSION:  # not 1.0, not true
            raise ReleaseError(
                f"release {release_id}: manifest schema_version must be {SCHEMA_VERSION}, got {schema_version!r}"
            )
        try:
            manifest = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ReleaseError(f"release {release_id}: manifest lacks field {exc.args[0]!r}") from None
        for name, kind in _MANIFEST_TYPES.items():
            if not isinstance(data[name], kind):
                raise ReleaseError(
                    f"release {release_id}: manifest field {name!r} must be a JSON {_JSON_NAMES[kind]}, "
                    f"got {data[name]!r:.80}"
                )
        not_strings = {rel: sha for rel, sha in manifest.files.items() if not isinstance(sha, str)}
        if not_strings:
            raise ReleaseError(
                f"release {release_id}: manifest files must map each path to a sha256 string, got {not_strings!r:.200}"
            )
        if manifest.release_id != release_id:
            raise ReleaseError(f"release directory {release_id!r} holds a manifest for {manifest.release_id!r}")
        if not manifest.files:  # a dict: checked with the other fields above
            raise ReleaseError(f"release {release_id}: manifest lists no files")
        return manifest

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


_MANIFEST_TYPES: dict[str, type] = {
    "release_id": str,
    "created_at": str,
    "training_runs": dict,
    "data_fingerprint": str,
    "metrics": dict,
    "config": dict,
    "files": dict,
}
_JSON_NAMES: dict[type, str] = {str: "string", dict: "object"}


class ReleaseWriter:
    """Builds a release in a staging directory; ``publish`` seals it and renames it into ``releases/``."""

    def __init__(self, store: ArtifactStore, release_id: str) -> None:
        self.store = store
        self.release_id = validate_release_id(release_id)
        if (store.releases_dir / release_id).exists():
            raise InvalidArgument(f"release {release_id!r} already exists in {store.releases_dir}")
        self.dir = store.staging_dir / f"{release_id}.{secrets.token_hex(4)}"
        self.dir.mkdir(parents=True)
        self._published = False

    def __enter__(self) -> ReleaseWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._published:
            shutil.rmtree(self.dir, ignore_errors=True)

    def publish(
        self,
        *,
        training_runs: dict[str, str],
        data_fingerprint: str,
        metrics: dict[str, Any],
        config: dict[str, Any] | None = None,
    ) -> str:
        """Checksum and fsync every file, write the manifest last, then atomically rename into place."""
        if self._published:
            raise RuntimeError(f"release {self.release_id} is already published")
        files = _walk_files(self.dir)
        if MANIFEST in files:
            raise ReleaseError(f"{MANIFEST} is written by publish(); remove it from the staging directory")
        if not files:
            raise ReleaseError(f"release {self.release_id}: nothing to publish in {self.dir}")
        for path in files.values():
            fsync_path(path)
        for dirpath, _, _ in os.walk(self.dir):
            fsync_path(Path(dirpath))
        manifest = Manifest(
            release_id=self.release_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            schema_version=SCHEMA_VERSION,
            training_runs=dict(training_runs),
            data_fingerprint=data_fingerprint,
            metrics=metrics,
            config=config or {},
            files={rel: sha256_file(path) for rel, path in sorted(files.items())},
        )
        atomic_write_text(self.dir / MANIFEST, manifest.to_json())
        target = self.store.releases_dir / self.release_id
        if target.exists():
            raise InvalidArgument(f"release {self.release_id!r} already exists in {self.store.releases_dir}")
        os.rename(self.dir, target)
        fsync_path(self.store.releases_dir)
        self._published = True
        return self.release_id


class ArtifactStore:
    """A local artifact root: ``releases/<id>/`` (immutable), ``channels/<name>`` (pointers), ``.staging/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.releases_dir = self.root / "releases"
        self.channels_dir = self.root / "channels"
        self.staging_dir = self.root / ".staging"
        for d in (self.releases_dir, self.channels_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)

    def new_release(self, release_id: str | None = None) -> ReleaseWriter:
        return ReleaseWriter(self, release_id or new_release_id())

    def release_dir(self, release_id: str) -> Path:
        """The directory of a published release; NotFound if there is none by that id."""
        path = self.releases_dir / validate_release_id(release_id)
        if path.is_symlink() or not path.is_dir() or not (path / MANIFEST).is_file():
            raise NotFound(f"release {release_id!r} does not exist in {self.releases_dir}")
        return path

    def exists(self, release_id: str) -> bool:
        try:
            self.release_dir(release_id)
        except (NotFound, InvalidArgument):
            return False
        return True

    def list_releases(self) -> list[str]:
        """Published release ids, oldest first (ids sort by creation time)."""
        return sorted(
            p.name for p in self.releases_dir.iterdir() if RELEASE_ID_RE.match(p.name) and self.exists(p.name)
        )

    def read_manifest(self, release_id: str) -> Manifest:
        path = self.release_dir(release_id) / MANIFEST
        if path.is_symlink():  # never read through it: it may point anywhere
            raise ReleaseError(f"release {release_id}: expected {MANIFEST} to be a regular file, got a symlink")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ReleaseError(f"release {release_id}: unreadable manifest: {exc}") from None
        return Manifest.from_json(data, release_id)

    def verify(self, release_id: str) -> tuple[Path, Manifest]:
        """Check a release end to end: manifest, no symlinks or unlisted files, and every sha256.

        Raises NotFound when there is no such release and ReleaseError when it must not serve.
        """
        path = self.releases_dir / validate_release_id(release_id)
        if path.is_symlink():
            raise ReleaseError(f"release {release_id}: the release directory is a symlink")
        if not path.is_dir():
            raise NotFound(f"release {release_id!r} does not exist in {self.releases_dir}")
        if not (path / MANIFEST).is_file():
            raise ReleaseError(f"release {release_id}: no {MANIFEST}; the release is incomplete")
        manifest = self.read_manifest(release_id)
        on_disk = _walk_files(path)
        on_disk.pop(MANIFEST)
        for rel in manifest.files:
            _check_relpath(rel, release_id)
        missing = sorted(set(manifest.files) - set(on_disk))
        unlisted = sorted(set(on_disk) - set(manifest.files))
        if missing:
            raise ReleaseError(f"release {release_id}: files listed in the manifest are missing: {missing[:5]}")
        if unlisted:
            raise ReleaseError(f"release {release_id}: files not in the manifest: {unlisted[:5]}")
        for rel, expected in manifest.files.items():
            actual = sha256_file(on_disk[rel])
            if actual != expected:
                raise ReleaseError(
                    f"release {release_id}: checksum mismatch for {rel}: expected sha256 {expected[:12]}…, "
                    f"got {actual[:12]}…"
                )
        return path, manifest

    # --- rollout state: channels/stable holds a release id, channels/candidate its id and traffic fraction ---

    def rollout(self) -> RolloutState:
        """The rollout state as the channel files say now."""
        stable = self._read_pointer("stable")
        candidate = self._read_pointer("candidate")
        if candidate is None:
            return RolloutState(stable)
        try:
            data = json.loads(candidate)
            return RolloutState(stable, validate_release_id(data["release_id"]), validate_fraction(data["fraction"]))
        except (ValueError, KeyError, TypeError, RecursionError, InvalidArgument) as exc:
            raise ReleaseError(f"{self.channels_dir / 'candidate'}: malformed candidate pointer: {exc}") from None

    def get_channel(self, name: str) -> str | None:
        """The release id the ``stable`` or ``candidate`` channel points to, or None when unset."""
        if name not in CHANNELS:
            raise InvalidArgument(f"channel must be one of {CHANNELS}, got {name!r}")
        rollout = self.rollout()
        return rollout.stable if name == "stable" else rollout.candidate

    def set_stable(self, release_id: str) -> None:
        """Point ``stable`` at a published release (atomic replace)."""
        self.release_dir(release_id)
        atomic_write_text(self.channels_dir / "stable", release_id + "\n")

    def set_candidate(self, release_id: str, fraction: float) -> None:
        """Point ``candidate`` at a published release with its traffic fraction, in one atomic write."""
        self.release_dir(release_id)
        pointer = json.dumps({"release_id": release_id, "fraction": validate_fraction(fraction)})
        atomic_write_text(self.channels_dir / "candidate", pointer + "\n")

    def clear_candidate(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.channels_dir / "candidate").unlink()
            fsync_path(self.channels_dir)

    def _read_pointer(self, name: str) -> str | None:
        path = self.channels_dir / name
        try:
            text = path.read_text(encoding="utf-8").strip()
            if name == "stable" and text:
                return validate_release_id(text)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, InvalidArgument) as exc:  # a directory, bytes that are not UTF-8, ...
            raise ReleaseError(f"{path}: malformed {name} pointer: {exc}") from None
        return text or None
