"""Release files every stage reads without TensorFlow: item catalog, per-user seen items, popularity fallback."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from funnel.data.loaders import Items
from funnel.errors import ReleaseError

CATALOG = "catalog.jsonl"
SEEN = "seen.npz"
POPULARITY = "popularity.npz"
HISTORY_PADDING = -1  # fills the query tower's history input past each user's items


def pad_histories(histories: Sequence[np.ndarray]) -> np.ndarray:
    """int64 [len(histories), max(1, longest)]: each history's item ids, right-padded with HISTORY_PADDING."""
    out = np.full((len(histories), max(1, max((len(h) for h in histories), default=0))), HISTORY_PADDING, np.int64)
    for row, items in enumerate(histories):
        out[row, : len(items)] = items
    return out


def distinct_in_order(items: np.ndarray) -> np.ndarray:
    """A history's distinct item ids in time order, each at its latest place (as Histories keeps them)."""
    items = np.asarray(items, dtype=np.int64)
    _, last = np.unique(items[::-1], return_index=True)
    return items[np.sort(len(items) - 1 - last)]


class IdIndex:
    """Row of each id in an array of distinct ids: int64 item ids or str user ids; every id→row lookup in Funnel
    goes through it, with -1 for an id that is not in the array.

    Integer ids that are small and non-negative (at most four times as many slots as ids) get a dense table: one
    memory read per id, where a binary search over a million-item catalog costs twenty scattered reads. Other ids
    use a binary search over a sorted copy.
    """

    DENSE_SLOTS_PER_ID = 4

    def __init__(self, ids: np.ndarray | Sequence[int] | Sequence[str]) -> None:
        ids = np.asarray(ids)
        self._strings = ids.dtype.kind in "USO"
        ids = ids.astype(str) if self._strings else ids.astype(np.int64)
        if ids.ndim != 1:
            raise ValueError(f"expected a 1-d array of ids, got shape {ids.shape}")
        self.size = len(ids)
        self._dense: np.ndarray | None = None
        self._by_string: dict[str, int] | None = None
        if not self._strings and self.size and ids.min() >= 0 and ids.max() < self.DENSE_SLOTS_PER_ID * self.size:
            self._dense = np.full(int(ids.max()) + 1, -1, dtype=np.int32)
            self._dense[ids] = np.arange(self.size, dtype=np.int32)
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]

    def __len__(self) -> int:
        return self.size

    def rows(self, ids: np.ndarray | Sequence[int] | Sequence[str]) -> np.ndarray:
        """int64 row of each id, -1 for ids not in the array."""
        ids = np.asarray(ids)
        ids = ids.astype(str) if self._strings else ids.astype(np.int64)
        if self._dense is not None:
            inside = (ids >= 0) & (ids < len(self._dense))
            found: np.ndarray = np.where(inside, self._dense[np.where(inside, ids, 0)], np.int64(-1))
            return found
        if not self.size:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), self.size - 1)
        found = np.where(self._sorted[pos] == ids, self._order[pos], np.int64(-1))
        return found

    def row(self, id_: int | str) -> int:
        """The row of one id, -1 when it is not in the array (str ids: a dict lookup, built on first use)."""
        if not self._strings:
            return int(self.rows(np.array([id_]))[0])
        if self._by_string is None:
            self._by_string = {str(u): int(r) for u, r in zip(self._sorted.tolist(), self._order.tolist())}
        return self._by_string.get(str(id_), -1)


@dataclass(frozen=True)
class CatalogItem:
    item_id: int
    title: str
    year: int
    genres: tuple[str, ...]


def write_catalog(release_dir: Path, items: Items) -> None:
    with open(Path(release_dir) / CATALOG, "w", encoding="utf-8") as f:
        for item_id, title, year, genres in zip(items.item_ids, items.titles, items.years, items.genres):
            f.write(json.dumps({"item_id": int(item_id), "title": title, "year": int(year), "genres": list(genres)}))
            f.write("\n")


def read_catalog(release_dir: Path) -> dict[int, CatalogItem]:
    path = Path(release_dir) / CATALOG
    catalog: dict[int, CatalogItem] = {}
    with open(path, "rb") as f:  # decoded line by line, so bytes that are not UTF-8 are a malformed row too
        for line_no, line in enumerate(f, 1):
            try:
                item = _catalog_item(json.loads(line.decode("utf-8")))
            except (ValueError, KeyError, RecursionError) as exc:
                raise ReleaseError(f"{path}:{line_no}: malformed catalog row: {exc}") from None
            catalog[item.item_id] = item
    return catalog


_JSON_NAMES: dict[type, str] = {int: "integer", str: "string", list: "array"}


def _catalog_item(row: Any) -> CatalogItem:
    """One catalog row as write_catalog writes it: item_id and year integers, title a string, genres strings."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for field, kind in (("item_id", int), ("title", str), ("year", int), ("genres", list)):
        value = row[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"expected {field} to be a JSON {_JSON_NAMES[kind]}, got {value!r:.80}")
    if not all(isinstance(genre, str) for genre in row["genres"]):
        raise ValueError(f"expected genres to be a list of strings, got {row['genres']!r:.80}")
    return CatalogItem(row["item_id"], row["title"], row["year"], tuple(row["genres"]))


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The 1-d arrays ``keys`` of an .npz file; anything else (truncated, corrupt, an array missing) is a
    ReleaseError that names the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                raise ReleaseError(f"{path}: expected arrays {keys}, missing {missing}")
            arrays = {k: data[k] for k in keys}
    except ReleaseError:
        raise
    except Exception as exc:  # np.load and zipfile raise many types on a damaged file: BadZipFile, EOFError, ...
        raise ReleaseError(
            f"{path}: expected an .npz archive, could not read it: {type(exc).__name__}: {exc}"
        ) from None
    shapes = {k: a.shape for k, a in arrays.items() if a.ndim != 1}
    if shapes:
        raise ReleaseError(f"{path}: expected 1-d arrays, got shapes {shapes}")
    return arrays


def _int64s(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """An integer array as int64; any other dtype (float, bool, uint64 beyond int64) is a ReleaseError."""
    if values.dtype.kind not in "iu" or not np.can_cast(values.dtype, np.int64):
        raise ReleaseError(f"{path}: expected {name} to be an int64 array, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


class Histories:
    """Each user's distinct items in the order they were interacted with (oldest first; a repeated item counts at
    its latest time), users sorted, in CSR layout (``users``, ``indptr``, ``items``). It is the release's
    ``seen.npz``, the history input of the query tower and the ranker, and the seen items excluded from
    recommendations. Without timestamps, file order is time order."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray | None = None) -> None:
        users, items = np.asarray(user_ids).astype(str), np.asarray(item_ids, dtype=np.int64)
        times = np.zeros(len(items), np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        if users.shape != items.shape or times.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"expected user id, item id and timestamp columns of equal length, got {users.shape}, "
                f"{items.shape} and {times.shape}"
            )
        distinct, codes = np.unique(users, return_inverse=True)
        order = np.lexsort((np.arange(len(items)), times, codes))  # by user, then time, then file order
        codes, items = codes[order], items[order]
        _, last = np.unique(np.stack([codes, items], axis=1)[::-1], axis=0, return_index=True)
        keep = np.sort(len(items) - 1 - last)  # each (user, item) at its latest interaction, in time order
        self._adopt(distinct, np.searchsorted(codes[keep], np.arange(len(distinct) + 1)), items[keep])

    def _adopt(self, users: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> None:
        self.users = np.asarray(users).astype(str)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        self._index = IdIndex(self.users)
        self._sets: dict[str, set[int]] = {}  # contains()'s per-user sets, built on first use

    @classmethod
    def from_csr(cls, users: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> Histories:
        """Histories already in CSR layout (as ``seen.npz`` stores them), checked for consistency."""
        if len(indptr) != len(users) + 1 or indptr[0] != 0 or indptr[-1] != len(items) or (np.diff(indptr) < 0).any():
            raise ReleaseError(
                f"seen items: expected indptr of length {len(users) + 1}, non-decreasing from 0 to {len(items)}, "
                f"got length {len(indptr)}: {np.asarray(indptr)[:5].tolist()}…{np.asarray(indptr)[-2:].tolist()}"
            )
        histories = cls.__new__(cls)
        histories._adopt(users, indptr, items)
        return histories

    def __contains__(self, user_id: str) -> bool:
        return self._index.row(user_id) >= 0

    def __len__(self) -> int:
        return len(self.users)

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Each user's row number, -1 for users without items."""
        return self._index.rows(user_ids)

    def get(self, user_id: str) -> np.ndarray:
        """The user's items, oldest first (empty for an unknown user)."""
        return self._items_at(self._index.row(user_id))

    def padded(self, user_ids: np.ndarray) -> np.ndarray:
        """int64 [len(user_ids), max(1, longest history)]: each user's items, right-padded with HISTORY_PADDING."""
        return pad_histories([self._items_at(row) for row in self.rows(user_ids).tolist()])

    def _items_at(self, row: int) -> np.ndarray:
        return self.items[:0] if row < 0 else self.items[self.indptr[row] : self.indptr[row + 1]]

    def contains(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """bool per (user_ids[i], item_ids[i]) pair: the user interacted with the item."""
        items = np.asarray(item_ids, dtype=np.int64)
        out = np.zeros(len(items), dtype=bool)
        for i, (user, item) in enumerate(zip(np.asarray(user_ids).astype(str).tolist(), items.tolist())):
            if user not in self._sets:
                self._sets[user] = set(self.get(user).tolist())
            out[i] = item in self._sets[user]
        return out


def write_seen(release_dir: Path, histories: Histories) -> None:
    """seen.npz: every user's items, oldest first (CSR: users, indptr, items)."""
    np.savez(Path(release_dir) / SEEN, users=histories.users, indptr=histories.indptr, items=histories.items)


def read_seen(release_dir: Path) -> Histories:
    path = Path(release_dir) / SEEN
    data = _load_npz(path, ("users", "indptr", "items"))
    return Histories.from_csr(
        data["users"], _int64s(path, "indptr", data["indptr"]), _int64s(path, "items", data["items"])
    )


@dataclass(frozen=True)
class Popularity:
    """Items by interaction count in training, most popular first; the fallback when retrieval is down."""

    item_ids: np.ndarray
    counts: np.ndarray

    def top(self, n: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular item ids not in ``exclude``, with scores in (0, 1] (count / max count)."""
        ids, counts = self.item_ids, self.counts
        if exclude is not None and len(exclude):
            keep = ~np.isin(ids, exclude)
            ids, counts = ids[keep], counts[keep]
        scale = float(self.counts[0]) if len(self.counts) else 1.0
        return ids[:n], (counts[:n] / scale).astype(np.float32)


def write_popularity(release_dir: Path, item_ids: np.ndarray) -> None:
    ids, counts = np.unique(np.asarray(item_ids, dtype=np.int64), return_counts=True)
    order = np.lexsort((ids, -counts))
    np.savez(Path(release_dir) / POPULARITY, item_ids=ids[order], counts=counts[order].astype(np.int64))


def read_popularity(release_dir: Path) -> Popularity:
    path = Path(release_dir) / POPULARITY
    data = _load_npz(path, ("item_ids", "counts"))
    item_ids, counts = _int64s(path, "item_ids", data["item_ids"]), _int64s(path, "counts", data["counts"])
    if len(item_ids) != len(counts):
        raise ReleaseError(f"{path}: expected a count for each of the {len(item_ids)} item_ids, got {len(counts)}")
    return Popularity(item_ids, counts)
