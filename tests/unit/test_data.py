"""Unit tests for funnel.data: the loaders, their validation errors, fingerprints and subsets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from funnel.data import loaders as data
from funnel.data import movielens as datasets
from funnel.errors import DataError

RECBOLE_INTER = (
    "timestamp:float\trating:float\tuser_id:token\titem_id:token\n881250949\t3\t196\t242\n891717742\t4.5\t186\t1\n"
)
RECBOLE_ITEM = (
    "item_id:token\tclass:token_seq\tmovie_title:token_seq\trelease_year:token\n"
    "1\tAnimation Children's Comedy\tToy Story\t1995\n"
    "242\tComedy\tKolya\t\n"
    "267\tunknown\tunkonwn\tunkonwn\n"
    "1412\tAnimation\tLand Before Time III (1995)\tV\n"
)
RECBOLE_USER = (
    "user_id:token\tzip_code:token\tage:token\tgender:token\toccupation:token\n"
    "196\t55105\t49\tM\twriter\n"
    "186\t00000\t\tF\tother\n"
)


def u_item_line(item_id: int, title: str, release_date: str, genres: set[str]) -> str:
    flags = "|".join("1" if genre in genres else "0" for genre in data.GROUPLENS_GENRES)
    return f"{item_id}|{title}|{release_date}||http://us.imdb.com/x|{flags}\n"


U_ITEM = (
    u_item_line(1, "Toy Story (1995)", "01-Jan-1995", {"Animation", "Children's", "Comedy"})
    + u_item_line(543, "Misérables, Les (1995)", "01-Jan-1995", {"Drama"})
    + u_item_line(12, "Usual Suspects, The (1995)", "14-Aug-1995", {"Crime", "Thriller"})
    + u_item_line(267, "unknown", "", {"unknown"})
    + u_item_line(99, "No Year In Title", "05-May-1997", {"Western"})
)
U_DATA = "196\t1\t3\t881250949\n186\t543\t5\t891717742\n22\t12\t1\t878887116\n"
U_USER = "196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|40206\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def recbole_dir(root: Path, inter: str = RECBOLE_INTER, item: str = RECBOLE_ITEM, user: str = RECBOLE_USER) -> Path:
    for ext, text in (("inter", inter), ("item", item), ("user", user)):
        write(root / f"ml-100k.{ext}", text)
    return root


def grouplens_dir(root: Path, u_data: str = U_DATA, u_item: str = U_ITEM, u_user: str | None = U_USER) -> Path:
    write(root / "u.data", u_data)
    write(root / "u.item", u_item, "latin-1")
    if u_user is not None:
        write(root / "u.user", u_user, "latin-1")
    return root


def csv_files(root: Path, interactions: str, items: str) -> tuple[Path, Path]:
    return write(root / "ratings.csv", interactions), write(root / "movies.csv", items)


# ---------------------------------------------------------------------------------------------------- RecBole


def test_recbole_reads_columns_by_header_name(tmp_path: Path) -> None:
    ds = data.load_recbole_ml100k(recbole_dir(tmp_path))

    assert ds.name == "ml-100k"
    inter = ds.interactions
    assert inter.user_ids.tolist() == ["196", "186"] and inter.user_ids.dtype.kind == "U"
    assert inter.item_ids.tolist() == [242, 1] and inter.item_ids.dtype == np.int64
    assert inter.ratings.tolist() == [3.0, 4.5] and inter.ratings.dtype == np.float32
    assert inter.timestamps.tolist() == [881250949, 891717742] and inter.timestamps.dtype == np.int64

    items = ds.items
    assert items.item_ids.tolist() == [1, 242, 267, 1412]
    assert items.titles == ("Toy Story", "Kolya", "unkonwn", "Land Before Time III")
    assert items.years.tolist() == [1995, 0, 0, 1995] and items.years.dtype == np.int32
    assert items.genres == (("Animation", "Children's", "Comedy"), ("Comedy",), ("unknown",), ("Animation",))

    assert ds.users is not None
    assert ds.users.user_ids.tolist() == ["196", "186"]
    assert ds.users.ages.tolist() == [49, 0] and ds.users.ages.dtype == np.int32
    assert ds.users.genders == ("M", "F")
    assert ds.users.occupations == ("writer", "other")
    assert ds.users.zip_codes == ("55105", "00000")


def test_recbole_missing_header_is_reported_on_line_1(tmp_path: Path) -> None:
    recbole_dir(tmp_path, inter="196\t242\t3\t881250949\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter:1: expected a header naming columns user_id, item_id") as info:
        data.load_recbole_ml100k(tmp_path)
    assert info.value.line == 1 and info.value.path.endswith("ml-100k.inter")


def test_recbole_header_without_data_rows_is_an_error(tmp_path: Path) -> None:
    recbole_dir(tmp_path, user="user_id:token\tage:token\n")
    with pytest.raises(DataError, match=r"ml-100k\.user:1: expected data rows after the header, got none"):
        data.load_recbole_ml100k(tmp_path)


# ---------------------------------------------------------------------------------------------------- GroupLens


def test_grouplens_latin1_titles_years_and_genre_flags(tmp_path: Path) -> None:
    ds = data.load_grouplens_ml100k(grouplens_dir(tmp_path))

    assert ds.interactions.user_ids.tolist() == ["196", "186", "22"]
    assert ds.interactions.item_ids.tolist() == [1, 543, 12]
    assert ds.interactions.ratings.tolist() == [3.0, 5.0, 1.0]
    assert ds.interactions.timestamps.tolist() == [881250949, 891717742, 878887116]
    items = ds.items
    assert items.item_ids.tolist() == [1, 543, 12, 267, 99]
    assert items.titles == ("Toy Story", "Misérables, Les", "Usual Suspects, The", "unknown", "No Year In Title")
    assert items.years.tolist() == [1995, 1995, 1995, 0, 1997]
    assert items.genres == (
        ("Animation", "Children's", "Comedy"),
        ("Drama",),
        ("Crime", "Thriller"),
        ("unknown",),
        ("Western",),
    )
    assert ds.users is not None
    assert ds.users.user_ids.tolist() == ["196", "186", "22"]
    assert ds.users.ages.tolist() == [49, 39, 25]
    assert ds.users.zip_codes == ("55105", "00000", "40206")


def test_grouplens_user_file_is_optional(tmp_path: Path) -> None:
    assert data.load_grouplens_ml100k(grouplens_dir(tmp_path, u_user=None)).users is None


def test_grouplens_genre_names_come_from_u_genre(tmp_path: Path) -> None:
    grouplens_dir(tmp_path, u_data="1\t7\t4\t0\n", u_item="7|Short (1999)|||http://x|1|0|1\n")
    write(tmp_path / "u.genre", "Alpha|0\nBeta|1\nGamma|2\n\n\n")  # the real u.genre ends in blank lines
    ds = data.load_grouplens_ml100k(tmp_path)
    assert ds.items.genres == (("Alpha", "Gamma"),)
    assert ds.items.years.tolist() == [1999]


def test_grouplens_genre_flag_must_be_0_or_1(tmp_path: Path) -> None:
    grouplens_dir(tmp_path, u_item=U_ITEM.replace("x|0|", "x|2|", 1))
    with pytest.raises(DataError, match=r"u\.item:1: expected genre flag 0 or 1 for 'unknown' \(field 6\), got '2'"):
        data.load_grouplens_ml100k(tmp_path)


# ---------------------------------------------------------------------------------------------------- CSV


def test_csv_with_all_columns_in_any_order(tmp_path: Path) -> None:
    inter, items = csv_files(
        tmp_path,
        "timestamp,item_id,user_id,rating\n100,10,alice,4\n200,20,bob,2.5\n",
        'item_id,title,genres,year\n10,"Good, the Bad",Western|Drama,1966\n20,Blank Year,,\n',
    )
    users = write(tmp_path / "users.csv", "user_id,age,zip_code\nalice,30,12345\nbob,,99999\n")
    ds = data.load_csv(inter, items, users)

    assert ds.name == "ratings"
    assert ds.interactions.user_ids.tolist() == ["alice", "bob"]
    assert ds.interactions.item_ids.tolist() == [10, 20]
    assert ds.interactions.ratings.tolist() == [4.0, 2.5]
    assert ds.interactions.timestamps.tolist() == [100, 200]
    assert ds.items.titles == ("Good, the Bad", "Blank Year")
    assert ds.items.years.tolist() == [1966, 0]
    assert ds.items.genres == (("Western", "Drama"), ())
    assert ds.users is not None
    assert ds.users.ages.tolist() == [30, 0]
    assert ds.users.genders == ("", "") and ds.users.zip_codes == ("12345", "99999")


def test_csv_optional_columns_default(tmp_path: Path) -> None:
    ds = data.load_csv(*csv_files(tmp_path, "user_id,item_id\nu1,5\n", "item_id,title\n5,Five\n"))
    assert ds.interactions.ratings.tolist() == [1.0] and ds.interactions.ratings.dtype == np.float32
    assert ds.interactions.timestamps.tolist() == [0]
    assert ds.items.years.tolist() == [0] and ds.items.genres == ((),)
    assert ds.users is None


@pytest.mark.parametrize(
    ("interactions", "items", "bad_file", "line"),
    [
        ("user_id,item_id\nu1,5\nu2,tt0114709\n", "item_id,title\n5,Five\n", "ratings.csv", 3),
        ("user_id,item_id\nu1,5\n", "item_id,title\n5,Five\ntt0114709,Toy Story\n", "movies.csv", 3),
    ],
)
def test_csv_non_integer_item_id(tmp_path: Path, interactions: str, items: str, bad_file: str, line: int) -> None:
    with pytest.raises(DataError) as info:
        data.load_csv(*csv_files(tmp_path, interactions, items))
    assert info.value.path.endswith(bad_file) and info.value.line == line
    assert "integer item ids are required" in str(info.value) and "'tt0114709'" in str(info.value)


def test_csv_line_numbers_count_blank_lines_and_multiline_fields(tmp_path: Path) -> None:
    items_text = 'item_id,title\n5,"Two\nLines"\n\n6,"Six\nLines",extra\n'  # the bad record spans lines 5-6
    inter, items = csv_files(tmp_path, "user_id,item_id\n\nu1,5\nu2,6\n", items_text)
    with pytest.raises(DataError, match=r"movies\.csv:5: expected 2 fields \(item_id, title\), got 3"):
        data.load_csv(inter, items)


# ---------------------------------------------------------------------------------------------------- errors


GOOD_U_DATA = "196\t1\t3\t881250949\n186\t543\t5\t891717742\n"


@pytest.mark.parametrize(
    ("u_data", "u_item", "bad_file", "line", "problem"),
    [
        (
            "196\t1\t3\t881250949\n186\t543\t5\n",
            U_ITEM,
            "u.data",
            2,
            "expected 4 fields (user_id, item_id, rating, timestamp), got 3",
        ),
        (
            "196\t1\t3\t881250949\n\n186\t543\tfive\t891717742\n",
            U_ITEM,
            "u.data",
            3,
            "expected a number rating, got 'five'",
        ),
        ("196\t1\tnan\t881250949\n", U_ITEM, "u.data", 1, "expected a finite rating, got 'nan'"),
        (GOOD_U_DATA.replace("5\t", "inf\t"), U_ITEM, "u.data", 2, "expected a finite rating, got 'inf'"),
        (
            GOOD_U_DATA.replace("891717742", "2024-01-01"),
            U_ITEM,
            "u.data",
            2,
            "expected an integer timestamp, got '2024-01-01'",
        ),
        ("\t1\t3\t881250949\n", U_ITEM, "u.data", 1, "expected a user_id, got an empty field"),
        (GOOD_U_DATA + "7\t1682\t4\t881250949\n", U_ITEM, "u.data", 3, "got item id 1682"),
        (
            GOOD_U_DATA,
            U_ITEM + U_ITEM.splitlines(keepends=True)[1],
            "u.item",
            6,
            "expected unique item ids, got 543 a second time",
        ),
        (GOOD_U_DATA, U_ITEM.replace("\n", "|0\n", 1), "u.item", 1, "expected 24 fields (item_id, title, release_date"),
        ("", U_ITEM, "u.data", 1, "expected data, got an empty file"),
        (GOOD_U_DATA, "\n\n", "u.item", 1, "expected data, got an empty file"),
    ],
)
def test_data_errors_name_file_and_line(
    tmp_path: Path, u_data: str, u_item: str, bad_file: str, line: int, problem: str
) -> None:
    grouplens_dir(tmp_path, u_data=u_data, u_item=u_item)
    with pytest.raises(DataError) as info:
        data.load_grouplens_ml100k(tmp_path)
    assert info.value.path == str(tmp_path / bad_file)
    assert info.value.line == line
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{tmp_path / bad_file}:{line}: ")


def test_unknown_item_error_names_the_id_and_items_file(tmp_path: Path) -> None:
    recbole_dir(tmp_path, inter=RECBOLE_INTER + "881250949\t3\t196\t999\n")
    with pytest.raises(DataError) as info:
        data.load_recbole_ml100k(tmp_path)
    assert info.value.line == 4 and info.value.path.endswith("ml-100k.inter")
    assert "got item id 999" in info.value.problem and "ml-100k.item" in info.value.problem


def test_duplicate_user_is_an_error(tmp_path: Path) -> None:
    grouplens_dir(tmp_path, u_user=U_USER + "196|50|M|writer|55105\n")
    with pytest.raises(DataError, match=r"u\.user:4: expected unique user ids, got '196' a second time"):
        data.load_grouplens_ml100k(tmp_path)


def test_csv_missing_header(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ratings\.csv:1: expected a header naming columns user_id, item_id"):
        data.load_csv(*csv_files(tmp_path, "u1,5,4.0,100\n", "item_id,title\n5,Five\n"))


def test_utf8_decode_error_names_the_line(tmp_path: Path) -> None:
    recbole_dir(tmp_path)
    (tmp_path / "ml-100k.item").write_bytes(RECBOLE_ITEM.encode() + b"9\tCaf\xe9\t1990\tDrama\n")
    with pytest.raises(DataError, match=r"ml-100k\.item:6: expected utf-8 text"):
        data.load_recbole_ml100k(tmp_path)


# ---------------------------------------------------------------------------------------------------- Dataset


def test_fingerprint_is_stable_and_pinned(tmp_path: Path) -> None:
    first = data.load_recbole_ml100k(recbole_dir(tmp_path / "a"))
    second = data.load_recbole_ml100k(recbole_dir(tmp_path / "b"))
    assert first.fingerprint() == second.fingerprint()
    # Pinned so any change to the serialization (or platform dependence) is noticed.
    assert first.fingerprint() == "d38ba01870b02ab505c2af8fcc878146254c0460c85e5f221a08895c898f1a7b"


def test_fingerprint_changes_with_one_rating_or_title(tmp_path: Path) -> None:
    ds = data.load_recbole_ml100k(recbole_dir(tmp_path))
    ratings = ds.interactions.ratings.copy()
    ratings[1] = 4.0
    changed_rating = dataclasses.replace(ds, interactions=dataclasses.replace(ds.interactions, ratings=ratings))
    changed_title = dataclasses.replace(
        ds, items=dataclasses.replace(ds.items, titles=("Toy Story 2", *ds.items.titles[1:]))
    )
    fingerprints = {ds.fingerprint(), changed_rating.fingerprint(), changed_title.fingerprint()}
    assert len(fingerprints) == 3


def _dataset_with_users(user_ids: list[str]) -> data.Dataset:
    n = len(user_ids)
    interactions = data.Interactions(
        np.array(user_ids), np.arange(n, dtype=np.int64), np.ones(n, np.float32), np.arange(n, dtype=np.int64)
    )
    items = data.Items(np.arange(n, dtype=np.int64), tuple(f"t{i}" for i in range(n)), np.zeros(n, np.int32), ((),) * n)
    distinct = sorted(set(user_ids))
    users = data.Users(
        np.array(distinct),
        np.zeros(len(distinct), np.int32),
        ("",) * len(distinct),
        ("",) * len(distinct),
        ("",) * len(distinct),
    )
    return data.Dataset("toy", interactions, items, users)


def test_subset_users_sorts_numeric_ids_numerically_and_keeps_file_order() -> None:
    ds = _dataset_with_users(["10", "2", "1", "3", "2", "10", "1"])
    subset = ds.subset_users(2)
    assert subset.interactions.user_ids.tolist() == ["2", "1", "2", "1"]
    assert subset.interactions.item_ids.tolist() == [1, 2, 4, 6]
    assert subset.users is not None and sorted(subset.users.user_ids.tolist()) == ["1", "2"]
    assert subset.items is ds.items
    assert subset.name == "toy-users2"
    assert len(ds.subset_users(100).interactions) == len(ds.interactions)


def test_subset_users_sorts_text_ids_lexicographically() -> None:
    ds = _dataset_with_users(["b", "a10", "a9", "b"])
    assert ds.subset_users(1).interactions.user_ids.tolist() == ["a10"]


def test_subset_users_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="expected max_users >= 1, got 0"):
        _dataset_with_users(["1"]).subset_users(0)


def test_take_keeps_the_given_order() -> None:
    inter = _dataset_with_users(["1", "2", "3"]).interactions
    taken = inter.take(np.array([2, 0]))
    assert taken.user_ids.tolist() == ["3", "1"] and taken.item_ids.tolist() == [2, 0] and len(taken) == 2


# ---------------------------------------------------------------------------------------------------- load_dataset


def test_load_dataset_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recbole = recbole_dir(tmp_path / "recbole")
    grouplens = grouplens_dir(tmp_path / "grouplens")
    inter, items = csv_files(tmp_path / "csv", "user_id,item_id\nu1,5\n", "item_id,title\n5,Five\n")
    users = write(tmp_path / "csv" / "users.csv", "user_id\nu1\n")
    fetched: list[Path] = []

    def fake_fetch(cache_dir: str | Path) -> Path:
        fetched.append(Path(cache_dir))
        return recbole

    monkeypatch.setattr(datasets, "fetch_movielens_100k", fake_fetch)

    assert data.load_dataset("movielens-100k", tmp_path / "cache").items.titles[0] == "Toy Story"
    assert fetched == [tmp_path / "cache"]
    assert data.load_dataset(f"recbole:{recbole}", "unused").interactions.item_ids.tolist() == [242, 1]
    assert data.load_dataset(f"grouplens:{grouplens}", "unused").items.titles[1] == "Misérables, Les"
    assert data.load_dataset(f"csv:{inter},{items}", "unused").users is None
    assert data.load_dataset(f"csv:{inter},{items},{users}", "unused").users is not None


@pytest.mark.parametrize(
    "spec", ["movielens-1m", "recbole:", "csv:only_one.csv", "csv:a,b,c,d", "csv:a,", "", "file:/x"]
)
def test_load_dataset_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(
        ValueError, match=r"expected a dataset spec of the form movielens-100k, grouplens:<dir>, recbole:<dir>, csv:"
    ):
        data.load_dataset(spec, "unused")
