"""Catalog, seen items and popularity files round-trip and answer lookups correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from funnel.data.loaders import Items
from funnel.release.files import (
    Histories,
    IdIndex,
    read_catalog,
    read_popularity,
    read_seen,
    write_catalog,
    write_popularity,
    write_seen,
)


def test_catalog_round_trip(tmp_path: Path) -> None:
    items = Items(
        np.array([7, 3], dtype=np.int64),
        ("Heat", "Ran"),
        np.array([1995, 0], dtype=np.int32),
        (("Action", "Crime"), ()),
    )
    write_catalog(tmp_path, items)
    catalog = read_catalog(tmp_path)
    assert catalog[7].title == "Heat" and catalog[7].genres == ("Action", "Crime") and catalog[3].year == 0


def test_seen_items_per_user_deduplicated_in_time_order(tmp_path: Path) -> None:
    # b rated 5 (t=30), 2 (t=20), 5 again (t=10; its latest time is 30), 7 (t=20, after 2 in the file).
    users, items = np.array(["b", "a", "b", "b", "10", "b"]), np.array([5, 1, 2, 5, 9, 7])
    write_seen(tmp_path, Histories(users, items, np.array([30, 0, 20, 10, 5, 20])))
    seen = read_seen(tmp_path)
    assert seen.get("b").tolist() == [2, 7, 5] and seen.get("a").tolist() == [1] and seen.get("10").tolist() == [9]
    assert "a" in seen and "zz" not in seen and seen.get("zz").tolist() == [] and len(seen) == 3
    assert seen.contains(np.array(["b", "b", "a", "zz"]), np.array([7, 1, 1, 1])).tolist() == [True, False, True, False]
    write_seen(tmp_path, Histories(users, items))  # no timestamps: file order is time order
    assert read_seen(tmp_path).get("b").tolist() == [2, 5, 7]


def test_popularity_order_ties_and_exclusion(tmp_path: Path) -> None:
    write_popularity(tmp_path, np.array([4, 4, 4, 9, 9, 1, 1, 6]))  # counts: 4→3, 9→2, 1→2, 6→1
    popularity = read_popularity(tmp_path)
    assert popularity.item_ids.tolist() == [4, 1, 9, 6]  # equal counts: lower item id first
    assert popularity.counts.tolist() == [3, 2, 2, 1]
    ids, scores = popularity.top(2, exclude=np.array([4, 1]))
    assert ids.tolist() == [9, 6]
    np.testing.assert_allclose(scores, [2 / 3, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([5, 0, 9, 2], dtype=np.int64),  # small non-negative ids: the dense table
        np.array([5, -3, 10**12, 2], dtype=np.int64),  # negative and huge ids: binary search
    ],
)
def test_id_index_gives_each_ids_row_and_minus_one_for_the_rest(ids: np.ndarray) -> None:
    index = IdIndex(ids)
    asked = np.concatenate([ids[::-1], [1, 11, -1, 10**13, -(10**13)]])
    expected = [3, 2, 1, 0, -1, -1, -1, -1, -1]
    assert index.rows(asked).tolist() == expected and index.rows(asked).dtype == np.int64
    assert index.rows(np.zeros(0, np.int64)).tolist() == []
    assert (index._dense is None) == (ids.min() < 0)


def test_an_empty_id_index_knows_nothing() -> None:
    assert IdIndex(np.zeros(0, np.int64)).rows(np.array([0, 3])).tolist() == [-1, -1]
