"""In-memory interaction datasets and validating loaders for RecBole, GroupLens and CSV files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from funnel.data import movielens
from funnel.errors import DataError

# The 19 genres of MovieLens 100K, in u.item flag order (used when u.genre is absent).
GROUPLENS_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_TITLE_YEAR = re.compile(r"^(.*\S)\s+\((\d{4})\)\s*$")
_ITEM_ID_HINT = " (integer item ids are required)"


@dataclass(frozen=True)
class Interactions:
    """User-item events as parallel arrays: str user ids, int64 item ids, float32 ratings, int64 unix timestamps."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, index: np.ndarray) -> Interactions:
        """The rows selected by ``index`` (integer positions or a boolean mask), in the order given."""
        return Interactions(self.user_ids[index], self.item_ids[index], self.ratings[index], self.timestamps[index])


@dataclass(frozen=True)
class Items:
    """The item catalogue: unique int64 ids, titles without the year, int32 years (0 unknown) and genres."""

    item_ids: np.ndarray
    titles: tuple[str, ...]
    years: np.ndarray
    genres: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Users:
    """User side information: unique str ids, int32 ages (0 unknown), genders, occupations and zip codes."""

    user_ids: np.ndarray
    ages: np.ndarray
    genders: tuple[str, ...]
    occupations: tuple[str, ...]
    zip_codes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, index: np.ndarray) -> Users:
        """The users at integer positions ``index``, in the order given."""
        positions = np.asarray(index, dtype=np.int64)
        return Users(
            self.user_ids[positions],
            self.ages[positions],
            tuple(self.genders[i] for i in positions),
            tuple(self.occupations[i] for i in positions),
            tuple(self.zip_codes[i] for i in positions),
        )


@dataclass(frozen=True)
class Dataset:
    """A named dataset; ``interactions`` keep the order of the ratings file."""

    name: str
    interactions: Interactions
    items: Items
    users: Users | None

    def fingerprint(self) -> str:
        """Hex sha256 over interactions, item ids and titles, and user ids; identical on every machine."""
        digest = hashlib.sha256(b"funnel-dataset-v1")
        sections: list[tuple[str, bytes]] = [
            ("interactions.user_ids", _json_bytes(self.interactions.user_ids.tolist())),
            ("interactions.item_ids", self.interactions.item_ids.astype("<i8").tobytes()),
            ("interactions.ratings", self.interactions.ratings.astype("<f4").tobytes()),
            ("interactions.timestamps", self.interactions.timestamps.astype("<i8").tobytes()),
            ("items.item_ids", self.items.item_ids.astype("<i8").tobytes()),
            ("items.titles", _json_bytes(list(self.items.titles))),
            ("users.user_ids", _json_bytes(None if self.users is None else self.users.user_ids.tolist())),
        ]
        for label, payload in sections:
            digest.update(f"{label}:{len(payload)}:".encode())
            digest.update(payload)
        return digest.hexdigest()

    def subset_users(self, max_users: int) -> Dataset:
        """The interactions of the ``max_users`` users whose ids sort first (numerically when all ids are digits).

        Items are kept whole; the users table, if any, is cut to the kept users; the name gets a suffix.
        """
        if max_users < 1:
            raise ValueError(f"expected max_users >= 1, got {max_users}")
        distinct = np.unique(self.interactions.user_ids).tolist()
        keep = sorted(distinct, key=int) if all(u.isdigit() for u in distinct) else distinct
        kept = np.array(keep[:max_users], dtype=np.str_)
        users = self.users
        if users is not None:
            users = users.take(np.flatnonzero(np.isin(users.user_ids, kept)))
        return Dataset(
            name=f"{self.name}-users{max_users}",
            interactions=self.interactions.take(np.flatnonzero(np.isin(self.interactions.user_ids, kept))),
            items=self.items,
            users=users,
        )


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------------------------
# Parsing helpers shared by the loaders


@dataclass(frozen=True)
class _Table:
    """The non-blank rows of one file, stored by column, with each row's 1-based line number."""

    path: str
    lines: list[int]
    columns: list[list[str]]

    def __len__(self) -> int:
        return len(self.lines)

    def fail(self, row: int, problem: str) -> NoReturn:
        raise DataError(self.path, self.lines[row], problem)

    def column(self, index: int | None, default: str = "") -> list[str]:
        """Column ``index``, or ``default`` on every row when the column is absent (``index`` None)."""
        return [default] * len(self) if index is None else self.columns[index]


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        bad = error.object[error.start : error.end]
        raise DataError(str(path), line, f"expected {encoding} text, got undecodable byte(s) {bad!r}") from None
    if not text.strip():
        raise DataError(str(path), 1, "expected data, got an empty file")
    return text


def _check_widths(path: str, lines: list[int], widths: list[int], names: Sequence[str]) -> None:
    """Every row must have one field per name in ``names``."""
    if widths.count(len(names)) != len(widths):
        row = next(row for row, width in enumerate(widths) if width != len(names))
        raise DataError(path, lines[row], f"expected {len(names)} fields ({', '.join(names)}), got {widths[row]}")


def _read_delimited(path: Path, delimiter: str, names: Sequence[str] | None = None, encoding: str = "utf-8") -> _Table:
    """Split a text file (no quoting) into columns, skipping blank lines.

    ``names`` are the columns of a header-less file; when None the first line is a header that sets the width.
    """
    # split("\n"), not splitlines(): latin-1 text may hold \x85 or \x1c, which splitlines() treats as line breaks.
    raw = _read_text(path, encoding).replace("\r\n", "\n").split("\n")
    lines = [number for number, line in enumerate(raw, start=1) if line]
    kept = [raw[number - 1] for number in lines]
    names = names or kept[0].split(delimiter)
    _check_widths(str(path), lines, [line.count(delimiter) + 1 for line in kept], names)
    fields = delimiter.join(kept).split(delimiter)
    return _Table(str(path), lines, [fields[column :: len(names)] for column in range(len(names))])


def _read_csv(path: Path) -> _Table:
    """Parse a CSV file with the csv module into columns, skipping blank lines; the header sets the width."""
    reader = csv.reader(io.StringIO(_read_text(path, "utf-8-sig")))
    lines: list[int] = []
    records: list[list[str]] = []
    previous_end = 0
    try:
        for record in reader:
            if record:
                lines.append(previous_end + 1)
                records.append(record)
            previous_end = reader.line_num
    except csv.Error as error:
        raise DataError(str(path), reader.line_num, f"expected valid CSV, got: {error}") from None
    _check_widths(str(path), lines, [len(record) for record in records], records[0])
    return _Table(str(path), lines, [list(column) for column in zip(*records, strict=True)])


def _split_header(
    table: _Table,
    required: Sequence[str],
    optional: Sequence[str] = (),
    type_separator: str | None = None,
) -> tuple[_Table, dict[str, int | None]]:
    """Read the header row; return the data rows and each wanted column's index (None when an optional one is absent).

    ``type_separator`` splits a type off each header field (RecBole's ``item_id:token``).
    """
    header = [column[0].strip() for column in table.columns]
    if type_separator:
        header = [field.split(type_separator)[0] for field in header]
    if any(name not in header for name in required):
        wanted = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
        table.fail(0, f"expected a header naming columns {wanted}, got {[column[0] for column in table.columns]!r}")
    if len(table) < 2:
        table.fail(0, "expected data rows after the header, got none")
    body = _Table(table.path, table.lines[1:], [column[1:] for column in table.columns])
    return body, {name: header.index(name) if name in header else None for name in (*required, *optional)}


def _numbers(table: _Table, values: list[str], column: str, dtype: type[np.generic], hint: str = "") -> np.ndarray:
    """Convert ``values`` to ``dtype`` in one pass; on failure, find and report the first bad line."""
    parse = int if np.issubdtype(dtype, np.integer) else float
    try:
        return np.fromiter(map(parse, values), dtype=dtype, count=len(values))
    except (ValueError, OverflowError):
        pass
    for row, value in enumerate(values):
        try:
            dtype(parse(value))
        except (ValueError, OverflowError):
            kind = "an integer" if parse is int else "a number"
            table.fail(row, f"expected {kind} {column}{hint}, got {value!r}")
    raise AssertionError("unreachable: a value failed to convert in bulk but not alone")


def _optional_ints(table: _Table, index: int | None, column: str) -> np.ndarray:
    """An int32 column where a blank field means unknown (0); all zeros when the column is absent."""
    values = [value if value.strip() else "0" for value in table.column(index, "0")]
    return _numbers(table, values, column, np.int32)


def _check_unique(table: _Table, ids: np.ndarray, what: str) -> None:
    repeated = np.ones(len(ids), dtype=bool)
    repeated[np.unique(ids, return_index=True)[1]] = False
    if repeated.any():
        row = int(np.argmax(repeated))
        table.fail(row, f"expected unique {what} ids, got {ids[row].item()!r} a second time")


def _interactions(table: _Table, columns: dict[str, int | None]) -> Interactions:
    """Interactions from columns keyed user_id, item_id, rating (default 1) and timestamp (default 0)."""
    users = table.column(columns["user_id"])
    if "" in users:
        table.fail(users.index(""), "expected a user_id, got an empty field")
    item_ids = _numbers(table, table.column(columns["item_id"]), "item_id", np.int64, _ITEM_ID_HINT)
    ratings = _numbers(table, table.column(columns["rating"], "1"), "rating", np.float32)
    infinite = np.flatnonzero(~np.isfinite(ratings))
    if len(infinite):
        row = int(infinite[0])
        table.fail(row, f"expected a finite rating, got {table.column(columns['rating'])[row]!r}")
    timestamps = _numbers(table, table.column(columns["timestamp"], "0"), "timestamp", np.int64)
    user_ids = np.array(users, dtype=np.str_)
    return Interactions(user_ids, item_ids, ratings, timestamps)


def _items(table: _Table, ids: list[str], titles: list[str], years: np.ndarray, genres: list[tuple[str, ...]]) -> Items:
    item_ids = _numbers(table, ids, "item_id", np.int64, _ITEM_ID_HINT)
    _check_unique(table, item_ids, "item")
    return Items(item_ids, tuple(titles), years, tuple(genres))


def _genre_lists(fields: list[str], separator: str | None) -> list[tuple[str, ...]]:
    return [tuple(genre for genre in field.split(separator) if genre) for field in fields]


def _titles_and_years(titles: list[str], year_texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Strip a trailing " (YYYY)" off each title into its year; else the year text if it is digits; else 0."""
    stripped: list[str] = []
    years: list[int] = []
    for title, year_text in zip(titles, year_texts, strict=True):
        match = _TITLE_YEAR.match(title)
        stripped.append(match[1] if match else title)
        years.append(int(match[2]) if match else int(year_text) if year_text.isdigit() else 0)
    return stripped, np.array(years, dtype=np.int32)


def _users(table: _Table, columns: dict[str, int | None]) -> Users:
    """Users from columns keyed user_id, age, gender, occupation and zip_code (all but user_id may be None)."""
    user_ids = np.array(table.column(columns["user_id"]), dtype=np.str_)
    _check_unique(table, user_ids, "user")
    return Users(
        user_ids,
        _optional_ints(table, columns["age"], "age"),
        tuple(table.column(columns["gender"])),
        tuple(table.column(columns["occupation"])),
        tuple(table.column(columns["zip_code"])),
    )


def _dataset(
    name: str, table: _Table, interactions: Interactions, items: Items, items_path: Path, users: Users | None
) -> Dataset:
    """Assemble a Dataset after checking every interaction (read from ``table``) names an item of the catalogue."""
    unknown = np.flatnonzero(~np.isin(interactions.item_ids, items.item_ids))
    if len(unknown):
        row = int(unknown[0])
        table.fail(row, f"expected an item id listed in {items_path}, got item id {int(interactions.item_ids[row])}")
    return Dataset(name, interactions, items, users)


_INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_USER_COLUMNS = ("age", "gender", "occupation", "zip_code")


def _positions(names: Sequence[str]) -> dict[str, int | None]:
    """The column index of each name in a header-less file."""
    return {name: index for index, name in enumerate(names)}


# --------------------------------------------------------------------------------------------------------------
# Loaders


def load_recbole_ml100k(directory: str | Path) -> Dataset:
    """Load RecBole atomic files ml-100k.{inter,item,user}, reading columns by header name."""
    directory = Path(directory)
    inter_path, item_path, user_path = (directory / f"ml-100k.{ext}" for ext in ("inter", "item", "user"))

    table, cols = _split_header(_read_delimited(inter_path, "\t"), _INTERACTION_COLUMNS, type_separator=":")
    interactions = _interactions(table, cols)

    item_table, item_cols = _split_header(
        _read_delimited(item_path, "\t"), ("item_id",), ("movie_title", "release_year", "class"), type_separator=":"
    )
    # release_year is a free token ("unkonwn", "V" occur): a non-numeric one is unknown unless the title has a year.
    titles, years = _titles_and_years(
        item_table.column(item_cols["movie_title"]), item_table.column(item_cols["release_year"])
    )
    genres = _genre_lists(item_table.column(item_cols["class"]), separator=None)
    items = _items(item_table, item_table.column(item_cols["item_id"]), titles, years, genres)

    users = _users(*_split_header(_read_delimited(user_path, "\t"), ("user_id",), _USER_COLUMNS, type_separator=":"))
    return _dataset("ml-100k", table, interactions, items, item_path, users)


def _grouplens_genres(path: Path) -> tuple[str, ...]:
    """Genre names from u.genre (``name|index`` lines in index order), or the standard 19 if the file is absent."""
    if not path.exists():
        return GROUPLENS_GENRES
    table = _read_delimited(path, "|", ("name", "index"), "latin-1")
    for row, index in enumerate(_numbers(table, table.column(1), "genre index", np.int64).tolist()):
        if index != row:
            table.fail(row, f"expected genre index {row} (genres listed in index order), got {index}")
    return tuple(table.column(0))


def _grouplens_items(path: Path, genre_names: tuple[str, ...]) -> Items:
    names = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names)
    table = _read_delimited(path, "|", names, "latin-1")
    for offset, (name, flags) in enumerate(zip(genre_names, table.columns[5:], strict=True)):
        bad = next((row for row, flag in enumerate(flags) if flag not in ("0", "1")), None)
        if bad is not None:
            table.fail(bad, f"expected genre flag 0 or 1 for {name!r} (field {6 + offset}), got {flags[bad]!r}")
    genres = [
        tuple(name for name, flag in zip(genre_names, flags, strict=True) if flag == "1")
        for flags in zip(*table.columns[5:], strict=True)
    ]
    # The year comes from the title's " (YYYY)", else from the release date "01-Jan-1995" (empty when unknown).
    release_years = [date.rsplit("-", 1)[-1].strip() for date in table.column(2)]
    titles, years = _titles_and_years(table.column(1), release_years)
    return _items(table, table.column(0), titles, years, genres)


def load_grouplens_ml100k(directory: str | Path) -> Dataset:
    """Load the GroupLens layout: u.data, u.item (latin-1), optional u.genre and u.user."""
    directory = Path(directory)
    table = _read_delimited(directory / "u.data", "\t", _INTERACTION_COLUMNS)
    interactions = _interactions(table, _positions(_INTERACTION_COLUMNS))
    item_path = directory / "u.item"
    items = _grouplens_items(item_path, _grouplens_genres(directory / "u.genre"))
    users = None
    if (directory / "u.user").exists():
        names = ("user_id", *_USER_COLUMNS)
        users = _users(_read_delimited(directory / "u.user", "|", names, "latin-1"), _positions(names))
    return _dataset("ml-100k", table, interactions, items, item_path, users)


def load_csv(interactions_csv: str | Path, items_csv: str | Path, users_csv: str | Path | None = None) -> Dataset:
    """Load headed CSV files: interactions user_id,item_id[,rating][,timestamp]; items item_id,title[,year][,genres]
    with '|'-separated genres; optional users user_id[,age][,gender][,occupation][,zip_code]."""
    interactions_csv, items_csv = Path(interactions_csv), Path(items_csv)
    table, cols = _split_header(_read_csv(interactions_csv), ("user_id", "item_id"), ("rating", "timestamp"))
    interactions = _interactions(table, cols)
    item_table, item_cols = _split_header(_read_csv(items_csv), ("item_id", "title"), ("year", "genres"))
    years = _optional_ints(item_table, item_cols["year"], "year")
    genres = _genre_lists(item_table.column(item_cols["genres"]), separator="|")
    titles = item_table.column(item_cols["title"])
    items = _items(item_table, item_table.column(item_cols["item_id"]), titles, years, genres)
    users = None
    if users_csv is not None:
        users = _users(*_split_header(_read_csv(Path(users_csv)), ("user_id",), _USER_COLUMNS))
    return _dataset(interactions_csv.stem, table, interactions, items, items_csv, users)


DATASET_SPECS = "movielens-100k, grouplens:<dir>, recbole:<dir>, csv:<interactions.csv>,<items.csv>[,<users.csv>]"


def load_dataset(spec: str, cache_dir: str | Path) -> Dataset:
    """Load the dataset named by ``spec`` (see DATASET_SPECS); movielens-100k is fetched into ``cache_dir``."""
    kind, _, argument = spec.partition(":")
    if spec == "movielens-100k":
        return load_recbole_ml100k(movielens.fetch_movielens_100k(cache_dir))
    if kind == "grouplens" and argument:
        return load_grouplens_ml100k(argument)
    if kind == "recbole" and argument:
        return load_recbole_ml100k(argument)
    if kind == "csv" and len(paths := argument.split(",")) in (2, 3) and all(paths):
        return load_csv(*paths)
    raise ValueError(f"expected a dataset spec of the form {DATASET_SPECS}; got {spec!r}")
