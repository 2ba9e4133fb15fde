"""Request validation shared by every stage: user ids, counts and item lists, with messages that say what was wrong."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from funnel.errors import InvalidArgument
from funnel.limits import MAX_HISTORY, MAX_USER_ID_CHARS
from funnel.release.files import IdIndex, distinct_in_order
from funnel.release.store import validate_release_id

_NO_HISTORY = np.zeros(0, dtype=np.int64)
_NO_HISTORY.flags.writeable = False  # shared by every request without a history

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def user_id(value: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument("user.user_id is required, got an empty string")
    if len(value) > MAX_USER_ID_CHARS:
        raise InvalidArgument(f"user.user_id must be at most {MAX_USER_ID_CHARS} characters, got {len(value)}")
    return value


def count(name: str, value: int, maximum: int) -> int:
    if not 1 <= value <= maximum:
        raise InvalidArgument(f"{name} must be between 1 and {maximum}, got {value}")
    return value


def _int64s(name: str, values: Sequence[int]) -> np.ndarray:
    """``values`` as an int64 array; ids beyond int64 (possible from Python callers, not over gRPC) are invalid."""
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        outside = [v for v in values if not (isinstance(v, int) and INT64_MIN <= v <= INT64_MAX)]
        raise InvalidArgument(f"{name} must be 64-bit signed integers, got {outside[:3]}") from None


def item_ids(values: Sequence[int], maximum: int, known: IdIndex) -> np.ndarray:
    """Non-empty, at most ``maximum``, every id in ``known``."""
    count("item_ids length", len(values), maximum)
    ids = _int64s("item_ids", values)
    unknown = ids[known.rows(ids) < 0]
    if len(unknown):
        raise InvalidArgument(f"item_ids must be in the release's catalog; unknown: {unknown[:10].tolist()}")
    return ids


def stage_release_id(value: str) -> str:
    """Stage services never choose a release: the gateway must name it on every call."""
    if not value:
        raise InvalidArgument("release_id is required: the gateway names the release on every stage call")
    return validate_release_id(value)


def history(values: Sequence[int]) -> np.ndarray:
    """Request-supplied history: at most MAX_HISTORY item ids, returned as its distinct items in time order (a
    repeat counts at its latest place, as stored histories keep them); unknown ids are ignored by the models."""
    if not len(values):
        return _NO_HISTORY
    if len(values) > MAX_HISTORY:
        raise InvalidArgument(f"user.history_item_ids holds at most {MAX_HISTORY} items, got {len(values)}")
    return distinct_in_order(_int64s("user.history_item_ids", values))
