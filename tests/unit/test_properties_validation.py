"""Property-based tests of request validation: for any input, each check returns a value within the documented
bounds or raises InvalidArgument (gRPC INVALID_ARGUMENT) with a message, never another exception type.

The oracles below restate the documented rules independently of the code (funnel/limits.py, docs/release-format.md)
and check both directions: what is accepted is within bounds, and what is within bounds is accepted.
"""

from __future__ import annotations

import math
import os
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from funnel import limits
from funnel.errors import FunnelError, InvalidArgument
from funnel.release.files import IdIndex
from funnel.release.store import RELEASE_ID_RE, validate_fraction, validate_release_id
from funnel.serving import validate

# Hypothesis caches under ./.hypothesis by default; keep the checkout clean unless the caller chose a place.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(tempfile.gettempdir()) / "hypothesis")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RELEASE_ID_FIRST = set(string.ascii_letters + string.digits)
RELEASE_ID_REST = RELEASE_ID_FIRST | set("._-")

# Deterministic (derandomize) so a noisy shared machine gives the same run every time; no example database.
PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------------------------------- inputs

whitespace = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000\u200b\x1c", max_size=20)
long_text = st.integers(limits.MAX_USER_ID_CHARS - 2, limits.MAX_USER_ID_CHARS + 2).flatmap(
    lambda n: st.text(min_size=n, max_size=n)
)
huge_text = st.sampled_from(["u" * 10**5, "\U0001f600" * 10**4, " " * 10**4 + "u", "\x00" * 300])
user_ids = st.one_of(st.text(), whitespace, long_text, huge_text, st.from_regex(r"\A\s*\S{1,3}\s*\Z"))

any_int = st.one_of(
    st.integers(),  # unbounded: negatives and far beyond int64
    st.integers(-3, 3),
    st.sampled_from([INT64_MIN - 1, INT64_MIN, INT64_MAX, INT64_MAX + 1, 2**64, -(2**64), 10**30, -(10**30)]),
    st.sampled_from([limits.MAX_K, limits.MAX_CANDIDATES, limits.MAX_HISTORY, limits.MAX_BATCH]).flatmap(
        lambda m: st.integers(m - 1, m + 1)
    ),
)
int64s = st.integers(INT64_MIN, INT64_MAX)
item_values = st.one_of(int64s, st.integers(-5, 20), any_int)
maximums = st.one_of(
    st.sampled_from([limits.MAX_K, limits.MAX_CANDIDATES, limits.MAX_HISTORY, limits.MAX_BATCH]),
    st.integers(1, 2000),
)


def _sized_lists(n: int) -> st.SearchStrategy[list[int]]:
    """A list of exactly ``n`` ids, cheap to draw even when ``n`` is large: a range with a few ids replaced."""
    return st.lists(st.tuples(st.integers(0, max(n - 1, 0)), item_values), max_size=3).map(
        lambda changes: _patched(list(range(n)), changes)
    )


def _patched(values: list[int], changes: list[tuple[int, int]]) -> list[int]:
    for at, value in changes:
        if values:
            values[at] = value
    return values


long_lists = st.sampled_from([limits.MAX_HISTORY - 1, limits.MAX_HISTORY, limits.MAX_HISTORY + 1, 10**5]).flatmap(
    _sized_lists
)
histories = st.one_of(st.lists(item_values, max_size=30), st.lists(st.integers(0, 5), max_size=30), long_lists)

release_id_alphabet = st.sampled_from([*"aZ09._-/\\\x00\n\r \t:~*?%", "\u00e9", "\u0660", "\U0001f600", "\ufeff"])
release_ids = st.one_of(
    st.text(),
    st.text(alphabet=release_id_alphabet, max_size=12),
    st.from_regex(RELEASE_ID_RE),  # `$` lets from_regex add a trailing newline: the id must still be refused
    st.from_regex(RELEASE_ID_RE, fullmatch=True),
    st.sampled_from(["..", ".", "/", "a/..", "../x", "a..b", "/abs", "x\x00y", "x" * 128, "x" * 129, "r1\n", "r1\r"]),
    st.integers(0, 130).map(lambda n: "r" * n),
)
non_strings = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.lists(st.text(), max_size=2))

json_numbers = st.one_of(
    st.floats(),  # nan, ±inf, -0.0, subnormals
    st.floats(0, 1),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**1024, 1, 0, True, False, 1e-320, 1 + 2**-52, -0.0]),
)
fractions = st.one_of(json_numbers, non_strings, st.text(max_size=4), st.decimals(), st.fractions())


# -------------------------------------------------------------------------------------------------- oracles


def outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, value) when ``call`` returns; (False, error) when it raises InvalidArgument. Any other exception
    type fails the test (pytest shows it with its traceback)."""
    try:
        return True, call()
    except InvalidArgument as exc:
        assert isinstance(exc, FunnelError) and exc.code is grpc.StatusCode.INVALID_ARGUMENT
        assert str(exc).strip(), "an InvalidArgument must say what was wrong"
        return False, exc


def is_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def valid_release_id(value: object) -> bool:
    """docs/release-format.md: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ and no '..' (the whole string, no newline)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and value[0] in RELEASE_ID_FIRST
        and set(value) <= RELEASE_ID_REST
        and ".." not in value
    )


def distinct_latest(values: list[int]) -> list[int]:
    """Each distinct id once, at its latest place, in order."""
    last = {v: i for i, v in enumerate(values)}
    return [v for i, v in enumerate(values) if last[v] == i]


# ---------------------------------------------------------------------------------------------- properties


@PROPERTY
@given(user_ids)
@example("")
@example(" \t\n")
@example("x" * limits.MAX_USER_ID_CHARS)
@example("x" * (limits.MAX_USER_ID_CHARS + 1))
def test_user_id_is_accepted_exactly_when_non_blank_and_short(value: str) -> None:
    accepted, result = outcome(lambda: validate.user_id(value))
    assert accepted == (bool(value.strip()) and len(value) <= limits.MAX_USER_ID_CHARS)
    if accepted:
        assert result == value
    else:
        assert "user.user_id" in str(result)


@PROPERTY
@given(any_int, maximums)
def test_count_is_accepted_exactly_between_one_and_the_maximum(value: int, maximum: int) -> None:
    accepted, result = outcome(lambda: validate.count("k", value, maximum))
    assert accepted == (1 <= value <= maximum)
    if accepted:
        assert result == value
    else:
        assert f"k must be between 1 and {maximum}, got {value}" == str(result)


@PROPERTY
@given(histories)
@example([INT64_MAX + 1])
@example([INT64_MIN - 1, 5])
@example([1, 2, 1])
def test_history_is_its_distinct_items_or_invalid(values: list[int]) -> None:
    accepted, result = outcome(lambda: validate.history(values))
    assert accepted == (len(values) <= limits.MAX_HISTORY and all(is_int64(v) for v in values))
    if accepted:
        assert result.dtype == np.int64 and result.ndim == 1
        assert result.tolist() == distinct_latest(values)
    else:
        assert "user.history_item_ids" in str(result)


@PROPERTY
@given(st.lists(int64s, max_size=8, unique=True) | st.lists(st.integers(0, 20), max_size=8, unique=True), st.data())
def test_item_ids_are_accepted_exactly_when_known_and_within_the_count(
    known_ids: list[int], data: st.DataObject
) -> None:
    known = IdIndex(np.array(known_ids, dtype=np.int64))
    values = data.draw(st.lists(st.sampled_from(known_ids) | item_values, max_size=12) if known_ids else histories)
    maximum = data.draw(st.integers(1, 12) | maximums)
    accepted, result = outcome(lambda: validate.item_ids(values, maximum, known))
    in_bounds = 1 <= len(values) <= maximum and all(is_int64(v) for v in values)
    assert accepted == (in_bounds and set(values) <= set(known_ids))
    if accepted:
        assert result.dtype == np.int64 and result.tolist() == values
    else:
        assert "item_ids" in str(result)


@PROPERTY
@given(st.one_of(release_ids, non_strings))
@example("r1\n")
@example("a" * 128)
@example("a" * 129)
def test_release_ids_are_accepted_exactly_when_they_are_safe_directory_names(value: Any) -> None:
    accepted, result = outcome(lambda: validate_release_id(value))
    assert accepted == valid_release_id(value)
    if accepted:
        assert result == value and "/" not in result and "\x00" not in result and result not in (".", "..")
    stage_accepted, stage_result = outcome(lambda: validate.stage_release_id(value))  # required, then the same rule
    assert stage_accepted == accepted
    if not stage_accepted:
        assert "release" in str(stage_result)


@PROPERTY
@given(fractions)
@example(math.nan)
@example(math.inf)
@example(10**400)
@example(2**1024)
def test_fraction_is_accepted_exactly_when_a_number_in_zero_to_one(value: Any) -> None:
    accepted, result = outcome(lambda: validate_fraction(value))
    is_number = isinstance(value, int | float)  # bool is an int: True is 1
    assert accepted == (is_number and 0 <= value <= 1)
    if accepted:
        assert type(result) is float and 0.0 <= result <= 1.0 and result == value
    else:
        assert "candidate fraction must be between 0 and 1" in str(result)


def test_limits_are_consistent() -> None:
    values = [getattr(limits, name) for name in dir(limits) if name.isupper()]
    assert values and all(type(v) is int and v >= 1 for v in values)
    assert limits.DEFAULT_CANDIDATES <= limits.MAX_CANDIDATES and limits.MAX_K <= limits.MAX_CANDIDATES


# ---------------------------------------------------------------------------- regressions found by the above


@pytest.mark.parametrize("values", [[2**63], [1, -(2**63) - 1], [10**30]])
def test_history_outside_int64_is_invalid_not_an_overflow(values: list[int]) -> None:
    with pytest.raises(InvalidArgument, match=r"64-bit signed integers.*got"):
        validate.history(values)


def test_item_ids_outside_int64_are_invalid_not_an_overflow() -> None:
    with pytest.raises(InvalidArgument, match=r"64-bit signed integers.*got"):
        validate.item_ids([1, 2**64], 10, IdIndex(np.array([1, 2], dtype=np.int64)))


@pytest.mark.parametrize("value", ["r1\n", "a" * 127 + "\n"])
def test_a_release_id_with_a_trailing_newline_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="release id must match"):
        validate_release_id(value)


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_a_fraction_too_large_for_a_float_is_invalid_not_an_overflow(value: int) -> None:
    with pytest.raises(InvalidArgument, match="between 0 and 1"):
        validate_fraction(value)
