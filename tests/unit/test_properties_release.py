"""Property-based tests of the release reader: a valid release, then hypothesis breaks it (manifest JSON of any
shape, paths out of the release, symlinks, truncated, extended or altered files, garbage channel pointers).

- ArtifactStore.verify, read_manifest, rollout and get_channel return or raise a FunnelError (NotFound or
  ReleaseError), never a KeyError, TypeError, ValueError, OSError... as such;
- they open nothing outside the release directory (the channels directory for the pointers): an audit hook
  records every file opened and directory listed while they run;
- a release verify() accepts has exactly its listed files, each a regular file whose sha256 matches, and a
  manifest whose fields have their declared types;
- the readers (read_catalog, read_seen, read_popularity) return whole data or raise ReleaseError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from funnel.data.loaders import Items
from funnel.errors import FunnelError, InvalidArgument, NotFound, ReleaseError
from funnel.release.files import (
    CATALOG,
    POPULARITY,
    SEEN,
    CatalogItem,
    Histories,
    read_catalog,
    read_popularity,
    read_seen,
    write_catalog,
    write_popularity,
    write_seen,
)
from funnel.release.store import MANIFEST, ArtifactStore, Manifest, RolloutState

# Hypothesis caches under ./.hypothesis by default; keep the checkout clean unless the caller chose a place.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(tempfile.gettempdir()) / "hypothesis")

pytestmark = pytest.mark.timeout(300)  # a reader that blocks (on a FIFO, say) fails instead of hanging the run

# Deterministic (derandomize) so a noisy shared machine gives the same run every time; no example database.
PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

RELEASE = "r1"
FIELDS = tuple(Manifest.__dataclass_fields__)
FIELD_TYPES = {
    "release_id": str,
    "created_at": str,
    "schema_version": int,
    "training_runs": dict,
    "data_fingerprint": str,
    "metrics": dict,
    "config": dict,
    "files": dict,
}
ITEMS = Items(
    item_ids=np.array([1, 2, 3, 50, 172], dtype=np.int64),
    titles=("Heat", "Ran", "Brazil (1985)", "Amélie", '"Quoted", with\\ escapes'),
    years=np.array([1995, 1985, 0, 2001, 1999], dtype=np.int32),
    genres=(("Action", "Crime"), (), ("Sci-Fi",), ("Comedy", "Romance"), ("Drama",)),
)
WEIGHTS = "model/weights.bin"  # a nested file, so a symlinked directory can stand in for model/
READERS: dict[str, Callable[[Path], Any]] = {CATALOG: read_catalog, SEEN: read_seen, POPULARITY: read_popularity}
LISTED = (CATALOG, SEEN, POPULARITY, WEIGHTS)
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # docs/release-format.md, and no '..'


# ------------------------------------------------------------------------------------------ the clean release


def build_release(root: Path) -> ArtifactStore:
    store = ArtifactStore(root)
    with store.new_release(RELEASE) as writer:
        write_catalog(writer.dir, ITEMS)
        write_seen(writer.dir, Histories(np.array(["u1", "u2", "u1", "10"]), np.array([1, 3, 50, 172])))
        write_popularity(writer.dir, np.array([1, 1, 1, 3, 3, 50, 172]))
        (writer.dir / WEIGHTS).parent.mkdir()
        (writer.dir / WEIGHTS).write_bytes(bytes(range(256)) * 4)
        writer.publish(training_runs={"retrieval": "run-1"}, data_fingerprint="fp", metrics={"m": 1.0})
    return store


def comparable(value: Any) -> Any:
    """A reader's result as plain data, to compare a reread with the clean one."""
    if isinstance(value, dict):
        return value
    if isinstance(value, Histories):
        return (value.users.tolist(), value.indptr.tolist(), value.items.tolist())
    return (value.item_ids.tolist(), value.counts.tolist())


CLEAN_READ: dict[str, Any] = {}  # what the readers return for the clean release, and (MANIFEST) its checksums


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean artifact root for the module; each example works on a copy of it."""
    root = tmp_path_factory.mktemp("clean") / "root"
    store = build_release(root)
    release = store.releases_dir / RELEASE
    CLEAN_READ.update({name: comparable(read(release)) for name, read in READERS.items()})
    CLEAN_READ[MANIFEST] = store.read_manifest(RELEASE).files
    return root


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh temporary directory per example (pytest's tmp_path is one per test, shared by its examples)."""
    with tempfile.TemporaryDirectory(prefix="funnel-prop-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def copy_of(clean: Path) -> Iterator[tuple[ArtifactStore, Path, Path]]:
    """A fresh copy of the clean root, its release directory, and a directory outside the root."""
    with scratch() as tmp:
        shutil.copytree(clean, tmp / "root", symlinks=True)
        (tmp / "outside").mkdir()
        store = ArtifactStore(tmp / "root")
        yield store, store.releases_dir / RELEASE, tmp / "outside"


# --------------------------------------------------------------------------------- what a call may open


class Opened:
    """Records, while active, every path opened or listed in this process (sys.addaudithook; a hook cannot be
    removed, so one is installed for the process and does nothing while no recording runs)."""

    paths: list[str] | None = None
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.paths is not None and event in ("open", "os.scandir", "os.listdir") and args:
            path = args[0]
            if isinstance(path, str | bytes | os.PathLike):
                cls.paths.append(os.path.realpath(os.fsdecode(path)))

    @classmethod
    @contextlib.contextmanager
    def inside(cls, allowed: Path) -> Iterator[None]:
        """Fail if the block opens or lists anything that resolves outside ``allowed``."""
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        allowed_real = os.path.realpath(allowed)
        cls.paths = []
        try:
            yield
        finally:
            paths, cls.paths = cls.paths, None
            outside = [p for p in paths if p != allowed_real and not p.startswith(allowed_real + os.sep)]
            assert not outside, f"opened outside {allowed_real}: {outside}"


def outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, value) or (False, the FunnelError raised). Any other exception type fails the test."""
    try:
        return True, call()
    except FunnelError as exc:
        assert str(exc).strip(), "a FunnelError must say what was wrong"
        return False, exc


# -------------------------------------------------------------------------------------------- mutations

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
SHA = hashlib.sha256(b"secret").hexdigest()
escaping_paths = st.sampled_from(
    [
        "../outside/secret",
        "../../outside/secret",
        "/etc/passwd",
        "model/../catalog.jsonl",
        "./catalog.jsonl",
        "model//weights.bin",
        "model/weights.bin/",
        "",
        ".",
        "..",
        "/",
        "catalog.jsonl\x00",
        "../r1/catalog.jsonl",
        "..\\outside\\secret",
        "C:/secret",
        "~/secret",
        "\u2025/secret",
    ]
) | st.text(max_size=12)
listed = st.sampled_from(LISTED)
shas = st.one_of(json_values, st.just(SHA), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))

breaking = st.one_of(
    st.tuples(st.just("manifest_json"), json_values),
    st.tuples(st.just("manifest_bytes"), st.binary(max_size=64)),
    st.tuples(st.just("manifest_set"), st.sampled_from(FIELDS) | st.text(max_size=8), json_values),
    st.tuples(st.just("manifest_del"), st.sampled_from(FIELDS)),
    st.tuples(st.just("files_add"), escaping_paths, shas),
    st.tuples(st.just("files_del"), listed),
    st.tuples(st.just("files_sha"), listed, shas),
    st.tuples(st.just("files_rename"), listed, escaping_paths),
    st.tuples(st.just("truncate"), listed, st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("append"), listed, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("flip"), listed, st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("replace"), listed, st.binary(max_size=64)),
    st.tuples(st.just("remove"), listed),
    st.tuples(st.just("unlisted"), st.sampled_from(["extra.bin", "model/extra", ".hidden"]), st.binary(max_size=8)),
    st.tuples(st.just("symlink_file"), listed, st.sampled_from(["outside_copy", "inside", "absolute", "dangling"])),
    st.tuples(st.just("symlink_dir"), st.just("model")),
    st.tuples(st.just("symlink_new"), st.sampled_from(["link", "model/link"])),
    st.tuples(st.just("symlink_manifest"), st.booleans()),
    st.tuples(st.just("symlink_release"), st.just(RELEASE)),
    st.tuples(st.just("dir_for_file"), listed | st.just(MANIFEST)),
    st.tuples(st.just("fifo"), listed | st.just("extra.fifo") | st.just(MANIFEST)),
)
harmless = st.one_of(  # alone, verify accepts these: half the mutations, so accepted releases come up often
    st.tuples(st.just("rehash"), listed),  # the manifest follows a changed file (or an unchanged one)
    st.tuples(
        st.just("manifest_set"),
        st.sampled_from(["metrics", "config", "training_runs", "extra"]),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
)
mutations = st.sampled_from([breaking, harmless]).flatmap(lambda kind: kind)  # one_of would flatten: 3 in 24


def _manifest(release: Path) -> Any:
    return json.loads((release / MANIFEST).read_text(encoding="utf-8"))


def _edit_manifest(release: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the manifest when it still is a JSON object with a files object (earlier mutations may
    have made it anything)."""
    path = release / MANIFEST
    try:
        data = _manifest(release)
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(data, dict) and isinstance(data.get("files"), dict):
        edit(data)
        path.unlink()
        path.write_text(json.dumps(data), encoding="utf-8")


def _replace_file(path: Path, data: bytes) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        path.write_bytes(data)


def mutate(op: tuple[Any, ...], release: Path, outside: Path) -> None:
    kind, *args = op
    (outside / "secret").write_bytes(b"secret")
    if not release.is_dir() or release.is_symlink():
        return
    manifest = release / MANIFEST
    target = release / args[0] if args and args[0] in LISTED else None
    if kind == "manifest_json":
        _replace_file(manifest, json.dumps(args[0]).encode())
    elif kind == "manifest_bytes":
        _replace_file(manifest, args[0])
    elif kind == "manifest_set":
        _edit_manifest(release, lambda m: m.__setitem__(args[0], args[1]))
    elif kind == "manifest_del":
        _edit_manifest(release, lambda m: m.pop(args[0], None))
    elif kind == "files_add":
        _edit_manifest(release, lambda m: m["files"].__setitem__(args[0], args[1]))
    elif kind == "files_del":
        _edit_manifest(release, lambda m: m["files"].pop(args[0], None))
    elif kind == "files_sha":
        _edit_manifest(release, lambda m: m["files"].__setitem__(args[0], args[1]))
    elif kind == "files_rename":
        _edit_manifest(release, lambda m: m["files"].__setitem__(args[1], m["files"].pop(args[0], SHA)))
    elif kind in ("truncate", "append", "flip", "replace") and target is not None and target.is_file():
        data = target.read_bytes()
        if kind == "truncate":
            data = data[: int(args[1] * len(data))]
        elif kind == "append":
            data += args[1]
        elif kind == "flip" and data:
            at = int(args[1] * len(data))
            data = data[:at] + bytes([data[at] ^ args[2]]) + data[at + 1 :]
        elif kind == "replace":
            data = args[1]
        _replace_file(target, data)
    elif kind == "rehash" and target is not None and target.is_file() and not target.is_symlink():
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        _edit_manifest(release, lambda m: m["files"].__setitem__(args[0], digest))
    elif kind == "remove" and target is not None and target.is_file():
        target.unlink()
    elif kind == "unlisted" and (release / args[0]).parent.is_dir():
        (release / args[0]).write_bytes(args[1])
    elif kind == "symlink_file" and target is not None and target.is_file() and not target.is_symlink():
        copy = outside / args[0].replace("/", "_")
        shutil.copyfile(target, copy)  # same bytes: the checksum alone would not catch it
        destination = {
            "outside_copy": copy,
            "inside": Path(os.path.relpath(release / CATALOG, target.parent)),
            "absolute": Path("/etc/hostname"),
            "dangling": outside / "nothing-here",
        }[args[1]]
        target.unlink()
        target.symlink_to(destination)
    elif kind == "symlink_dir" and (release / "model").is_dir() and not (release / "model").is_symlink():
        shutil.copytree(release / "model", outside / "model", dirs_exist_ok=True)
        shutil.rmtree(release / "model")
        (release / "model").symlink_to(outside / "model", target_is_directory=True)
    elif kind == "symlink_new" and (release / args[0]).parent.is_dir() and not (release / args[0]).exists():
        (release / args[0]).symlink_to(outside / "secret")
    elif kind == "symlink_manifest" and manifest.is_file() and not manifest.is_symlink():
        shutil.copyfile(manifest, outside / MANIFEST)  # a valid manifest, only not inside the release
        manifest.unlink()
        manifest.symlink_to(outside / MANIFEST if args[0] else Path("..", "..", "..", "outside", MANIFEST))
    elif kind == "symlink_release":
        shutil.copytree(release, outside / RELEASE, symlinks=True)
        shutil.rmtree(release)
        release.symlink_to(outside / RELEASE, target_is_directory=True)
    elif kind == "dir_for_file":
        path = release / args[0]
        if path.is_file() and not path.is_symlink():
            path.unlink()
            (path / "inner").mkdir(parents=True)
    elif kind == "fifo":
        path = release / args[0]
        if path.is_symlink() or path.is_file():
            path.unlink()
        if not path.exists():
            os.mkfifo(path)


def on_disk(release: Path) -> dict[str, Path]:
    """Every entry below ``release`` that is not a directory, by relative POSIX path (symlinks not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(release):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                found[path.relative_to(release).as_posix()] = path
    return found


# ------------------------------------------------------------------------------------------------ properties


@settings(PROPERTY, max_examples=150)
@given(st.lists(mutations, min_size=1, max_size=3))
@example([("symlink_manifest", True)])
@example([("symlink_dir", "model")])
@example([("files_sha", CATALOG, 12345)])
@example([("files_sha", CATALOG, None)])
@example([("manifest_set", "metrics", [])])
@example([("manifest_set", "config", None)])
@example([("truncate", CATALOG, 0.5), ("rehash", CATALOG)])
def test_verify_accepts_only_whole_releases_and_reads_nothing_outside(clean: Path, ops: list[tuple[Any, ...]]) -> None:
    with copy_of(clean) as (store, release, outside):
        for op in ops:
            mutate(op, release, outside)
        with Opened.inside(release):
            accepted, result = outcome(lambda: store.verify(RELEASE))
            read_ok, read_result = outcome(lambda: store.read_manifest(RELEASE))
        event(f"verify: {type(result).__name__ if not accepted else 'accepted'}")
        if not accepted:
            assert isinstance(result, NotFound | ReleaseError), repr(result)
            assert not isinstance(result, NotFound) or not release.exists()
            return
        path, manifest = result
        assert path == release and not path.is_symlink() and os.path.realpath(path) == str(release)
        assert read_ok and read_result.to_json() == manifest.to_json()
        for field, kind in FIELD_TYPES.items():
            value = getattr(manifest, field)
            assert isinstance(value, kind) and not isinstance(value, bool), f"{field}: {value!r}"
        assert manifest.release_id == RELEASE and manifest.schema_version == 1
        files = on_disk(release)
        assert files.pop(MANIFEST) and set(files) == set(manifest.files)
        for rel, file in files.items():
            assert stat.S_ISREG(os.lstat(file).st_mode), rel  # no symlink, FIFO, ...
            assert hashlib.sha256(file.read_bytes()).hexdigest() == manifest.files[rel], rel
        with Opened.inside(release):  # an accepted release reads whole, or its reader refuses it
            for name, read in READERS.items():
                loaded, data = outcome(lambda read=read: read(release))
                assert loaded or isinstance(data, ReleaseError)
                if manifest.files[name] == CLEAN_READ[MANIFEST][name]:  # the clean bytes: the clean data
                    assert loaded and comparable(data) == CLEAN_READ[name], name


def file_mutations(name: str) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("truncate"), st.just(name), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("append"), st.just(name), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("flip"), st.just(name), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
        st.tuples(st.just("replace"), st.just(name), st.binary(max_size=200)),
    )


catalog_lines = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"item_id": json_values | st.integers(), "title": json_values, "year": json_values, "genres": json_values}
    ).map(json.dumps),
    st.sampled_from(
        [
            '{"item_id": 1e999, "title": "x", "year": 1, "genres": []}',
            '{"item_id": 1, "title": "x", "year": -Infinity, "genres": []}',
            '{"item_id": NaN, "title": "x", "year": 1, "genres": []}',
            '{"item_id": 1, "title": "x", "year": 1, "genres": "Drama"}',
            '{"item_id": 1.5, "title": "x", "year": 1, "genres": []}',
            '{"item_id": "7", "title": "x", "year": 1, "genres": []}',
            '{"item_id": true, "title": "x", "year": 1, "genres": []}',
            '{"item_id": 1, "title": ["x"], "year": 1, "genres": [1]}',
        ]
    ),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


def well_typed(item: CatalogItem) -> bool:
    return (
        type(item.item_id) is int
        and isinstance(item.title, str)
        and type(item.year) is int
        and isinstance(item.genres, tuple)
        and all(isinstance(g, str) for g in item.genres)
    )


@settings(PROPERTY, max_examples=120)
@given(st.sampled_from(list(READERS)).flatmap(lambda name: st.lists(file_mutations(name), min_size=1, max_size=2)))
@example([("replace", SEEN, b"")])
@example([("replace", CATALOG, b"\xff\xfe\n")])
def test_readers_return_whole_data_or_a_release_error(clean: Path, ops: list[tuple[Any, ...]]) -> None:
    name = ops[0][1]
    with scratch() as tmp:
        release = tmp / RELEASE
        release.mkdir()
        clean_bytes = (clean / "releases" / RELEASE / name).read_bytes()
        (release / name).write_bytes(clean_bytes)
        for op in ops:
            mutate(op, release, tmp)
        data = (release / name).read_bytes()
        with Opened.inside(release):
            loaded, result = outcome(lambda: READERS[name](release))
        event(f"{name}: {'read' if loaded else str(result).split(': ', 1)[-1][:40]}")
        if not loaded:
            assert isinstance(result, ReleaseError), repr(result)
            return
        if name == CATALOG:
            assert all(well_typed(item) for item in result.values())
            if clean_bytes.startswith(data):  # a truncated catalog: its whole lines, never a part of one
                last_whole = not data.endswith(b"\n") and clean_bytes[len(data) : len(data) + 1] == b"\n"
                whole_lines = data.count(b"\n") + last_whole
                assert list(result.values()) == list(CLEAN_READ[CATALOG].values())[:whole_lines]
        elif clean_bytes.startswith(data) or data.startswith(clean_bytes):  # truncated or extended arrays
            assert comparable(result) == CLEAN_READ[name]


@settings(PROPERTY, max_examples=80)
@given(st.lists(catalog_lines, min_size=1, max_size=3))
def test_catalog_rows_are_well_typed_or_a_release_error(lines: list[str]) -> None:
    with scratch() as release:
        (release / CATALOG).write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        loaded, result = outcome(lambda: read_catalog(release))
        assert loaded or isinstance(result, ReleaseError), repr(result)
        if loaded:
            assert all(well_typed(item) for item in result.values()), result


arrays = st.one_of(
    st.lists(st.integers(-5, 200), max_size=6).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.integers(0, 6), max_size=6).map(np.array),
    st.lists(st.text(max_size=3), max_size=4).map(np.array),
    st.lists(st.floats(), max_size=4).map(np.array),
    st.sampled_from(
        [
            np.int64(3),
            np.zeros((2, 2), np.int64),
            np.array([0, 1, 2], np.uint8),
            np.array([True]),
            np.array(["u1", "u2"]),
            np.array([0, 2, 1], np.int64),
            np.array([3, 1, 2], np.int64),
        ]
    ),
)


@settings(PROPERTY, max_examples=80)
@given(
    st.sampled_from([SEEN, POPULARITY]),
    st.dictionaries(st.sampled_from(["users", "indptr", "items", "item_ids", "counts", "other"]), arrays),
)
def test_npz_readers_check_what_they_load(name: str, content: dict[str, np.ndarray]) -> None:
    with scratch() as release:
        np.savez(release / name, **content)
        loaded, result = outcome(lambda: READERS[name](release))
        assert loaded or isinstance(result, ReleaseError), repr(result)
        if loaded and name == SEEN:
            users, indptr, items = result.users, result.indptr, result.items
            assert users.ndim == indptr.ndim == items.ndim == 1 and len(indptr) == len(users) + 1
            assert indptr[0] == 0 and indptr[-1] == len(items) and (np.diff(indptr) >= 0).all()
            assert indptr.dtype == items.dtype == np.int64
        elif loaded:
            assert result.item_ids.ndim == result.counts.ndim == 1 and len(result.item_ids) == len(result.counts)
            assert result.item_ids.dtype.kind == result.counts.dtype.kind == "i"


pointer_texts = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"release_id": json_values | st.sampled_from(["r1", "r1\n", "../r1", "r2"]), "fraction": json_values}
    ).map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b'{"release_id": "r1", "fraction": 1' + b"0" * 400 + b"}",
            b'{"release_id": "r1", "fraction": 1e999}',
            b'{"release_id": "r1", "fraction": NaN}',
            b'{"release_id": "r1\\n", "fraction": 0.5}',
            b'{"release_id": "r1", "fraction": 0.5}',
            b"r1\n",
            b"\xff\xfe",
        ]
    ),
)


@settings(PROPERTY, max_examples=100)
@given(st.one_of(st.none(), pointer_texts, st.just("dir")), st.one_of(st.none(), pointer_texts, st.just("dir")))
def test_channel_pointers_give_a_valid_rollout_or_a_release_error(stable: Any, candidate: Any) -> None:
    with scratch() as root:
        store = ArtifactStore(root)
        for name, content in (("stable", stable), ("candidate", candidate)):
            if content == "dir":
                (store.channels_dir / name).mkdir()
            elif content is not None:
                (store.channels_dir / name).write_bytes(content)
        with Opened.inside(store.channels_dir):
            loaded, result = outcome(store.rollout)
            channels = [outcome(lambda n=name: store.get_channel(n)) for name in ("stable", "candidate")]
        if not loaded:
            assert isinstance(result, ReleaseError), repr(result)
            assert all(not ok and isinstance(error, ReleaseError) for ok, error in channels)
            return
        assert isinstance(result, RolloutState)
        assert [value for _, value in channels] == [result.stable, result.candidate]
        for release_id in (result.stable, result.candidate):
            assert release_id is None or (SAFE_ID.match(release_id) and ".." not in release_id), release_id
        assert type(result.fraction) is float and 0.0 <= result.fraction <= 1.0
        assert candidate is not None or (result.candidate is None and result.fraction == 0.0)


@settings(PROPERTY, max_examples=25)
@given(st.text(max_size=10) | st.sampled_from(["stable", "candidate", "Stable", "stable\n"]))
def test_get_channel_names_are_checked(name: str) -> None:
    with scratch() as root:
        store = ArtifactStore(root)
        (store.channels_dir / "stable").write_text(RELEASE + "\n")
        accepted, result = outcome(lambda: store.get_channel(name))
        assert accepted == (name in ("stable", "candidate"))
        if accepted:
            assert result == (RELEASE if name == "stable" else None)
        else:
            assert isinstance(result, InvalidArgument) and repr(name) in str(result)


# ---------------------------------------------------------------------------- regressions found by the above


@pytest.fixture
def published(tmp_path: Path) -> tuple[ArtifactStore, Path]:
    store = build_release(tmp_path / "root")
    return store, store.releases_dir / RELEASE


def test_a_symlinked_manifest_is_refused_without_reading_it(published: tuple[ArtifactStore, Path]) -> None:
    store, release = published
    elsewhere = release.parent.parent / "elsewhere.json"
    shutil.copyfile(release / MANIFEST, elsewhere)  # a valid manifest for this release, only not inside it
    (release / MANIFEST).unlink()
    (release / MANIFEST).symlink_to(elsewhere)
    with Opened.inside(release):
        with pytest.raises(ReleaseError, match="expected manifest.json to be a regular file, got a symlink"):
            store.read_manifest(RELEASE)
        with pytest.raises(ReleaseError, match="symlink"):
            store.verify(RELEASE)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("files", {CATALOG: None}, "manifest files must map each path to a sha256 string, got {'catalog.jsonl': None}"),
        (
            "files",
            {CATALOG: 12345},
            "manifest files must map each path to a sha256 string, got {'catalog.jsonl': 12345}",
        ),
        ("metrics", [], "manifest field 'metrics' must be a JSON object, got []"),
        ("config", None, "manifest field 'config' must be a JSON object, got None"),
        ("release_id", ["r1"], "manifest field 'release_id' must be a JSON string, got ['r1']"),
        ("schema_version", True, "manifest schema_version must be 1, got True"),
        ("schema_version", 1.0, "manifest schema_version must be 1, got 1.0"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_a_release_error(
    published: tuple[ArtifactStore, Path], field: str, value: Any, message: str
) -> None:
    store, release = published
    manifest = json.loads((release / MANIFEST).read_text())
    manifest[field] = {**manifest["files"], **value} if field == "files" else value
    (release / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ReleaseError, match=re.escape(message)):
        store.verify(RELEASE)


def test_a_deeply_nested_manifest_is_a_release_error(published: tuple[ArtifactStore, Path]) -> None:
    store, release = published
    (release / MANIFEST).write_text("[" * 100_000)
    with pytest.raises(ReleaseError, match="unreadable manifest: maximum recursion depth"):
        store.verify(RELEASE)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("candidate", b'{"release_id": "r1", "fraction": 1' + b"0" * 400 + b"}", "fraction must be between 0 and 1"),
        ("candidate", b'{"release_id": "r1\\n", "fraction": 0.5}', "release id must match"),
        ("candidate", b"[" * 100_000, "maximum recursion depth"),
        ("candidate", b"\x80", "'utf-8' codec can't decode"),
        ("candidate", None, "Is a directory"),
        ("stable", b"\xff\xfe", "'utf-8' codec can't decode"),
        ("stable", b"\x00", "release id must match"),
        ("stable", None, "Is a directory"),
    ],
)
def test_malformed_channel_pointers_are_a_release_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    store = ArtifactStore(tmp_path)
    if content is None:
        (store.channels_dir / name).mkdir()
    else:
        (store.channels_dir / name).write_bytes(content)
    with pytest.raises(ReleaseError, match=f"malformed {name} pointer: .*{re.escape(message)}"):
        store.rollout()
    with pytest.raises(ReleaseError, match=f"malformed {name} pointer"):
        store.get_channel("stable")


@pytest.mark.parametrize(
    "line, message",
    [
        (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff"),
        (
            b'{"item_id": 1e999, "title": "x", "year": 1, "genres": []}',
            "expected item_id to be a JSON integer, got inf",
        ),
        (
            b'{"item_id": true, "title": "x", "year": 1, "genres": []}',
            "expected item_id to be a JSON integer, got True",
        ),
        (b'{"item_id": 1, "title": ["x"], "year": 1, "genres": []}', "expected title to be a JSON string, got ['x']"),
        (
            b'{"item_id": 1, "title": "x", "year": 1, "genres": "Drama"}',
            "expected genres to be a JSON array, got 'Drama'",
        ),
        (b'{"item_id": 1, "title": "x", "year": 1, "genres": [1]}', "expected genres to be a list of strings, got [1]"),
        (b"[" * 100_000, "maximum recursion depth"),
    ],
)
def test_malformed_catalog_rows_are_a_release_error(tmp_path: Path, line: bytes, message: str) -> None:
    write_catalog(tmp_path, ITEMS)
    with open(tmp_path / CATALOG, "ab") as f:
        f.write(line + b"\n")
    with pytest.raises(ReleaseError, match=re.escape(f"catalog.jsonl:6: malformed catalog row: {message}")):
        read_catalog(tmp_path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (SEEN, b"", "expected an .npz archive, could not read it: EOFError"),
        (SEEN, "half", "expected an .npz archive, could not read it: BadZipFile"),
        (POPULARITY, "npy", "expected an .npz archive, could not read it"),
        (SEEN, {"users": np.array(["a"]), "indptr": np.int64(1), "items": np.array([1])}, "expected 1-d arrays"),
        (
            SEEN,
            {"users": np.array(["a", "b"]), "indptr": np.array([0, 2, 1]), "items": np.array([1])},
            "non-decreasing",
        ),
        (SEEN, {"users": np.array(["a"]), "indptr": np.array([1, 1]), "items": np.array([1])}, "non-decreasing from 0"),
        (SEEN, {"users": np.array(["a"]), "indptr": np.array([0, 1]), "items": np.array([1.5])}, "dtype float64"),
        (
            POPULARITY,
            {"item_ids": np.array([1, 2]), "counts": np.array([3])},
            "a count for each of the 2 item_ids, got 1",
        ),
        (POPULARITY, {"item_ids": np.array([1]), "counts": np.array([0.5])}, "expected counts to be an int64 array"),
    ],
)
def test_damaged_npz_files_are_a_release_error(
    clean: Path, tmp_path: Path, name: str, content: Any, message: str
) -> None:
    if content == "half":
        data = (clean / "releases" / RELEASE / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    elif content == "npy":
        with open(tmp_path / name, "wb") as f:
            np.save(f, np.arange(3))
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    else:
        np.savez(tmp_path / name, **content)
    with pytest.raises(ReleaseError, match=re.escape(message)):
        READERS[name](tmp_path)
