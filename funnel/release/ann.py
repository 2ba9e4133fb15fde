"""The ANN search settings a release's index.json carries, and the one search call every reader of the index makes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from funnel.errors import ReleaseError

SEARCH_KEY = "search"  # index.json key holding the tuned settings (absent: the searcher's own)


@dataclass(frozen=True)
class SearchParams:
    """How much of a tree-AH index one query searches: ``leaves_to_search`` partitions, then the best
    ``reorder_factor`` × k approximate neighbours rescored exactly. None keeps the searcher's built-in setting
    (a brute-force searcher has neither)."""

    leaves_to_search: int | None = None
    reorder_factor: float | None = None

    def pre_reorder(self, k: int) -> int | None:
        return None if self.reorder_factor is None else max(k, math.ceil(self.reorder_factor * k))

    def to_json(self) -> dict[str, Any]:
        return {"leaves_to_search": self.leaves_to_search, "reorder_factor": self.reorder_factor}

    @classmethod
    def from_index_meta(cls, meta: dict[str, Any]) -> SearchParams:
        """The settings under index.json's "search" key; the searcher's own when the key is absent."""
        raw = meta.get(SEARCH_KEY)
        if raw is None:
            return cls()
        leaves, factor = (raw.get("leaves_to_search"), raw.get("reorder_factor")) if isinstance(raw, dict) else (0, 0)
        if not (leaves is None or (isinstance(leaves, int) and leaves >= 1)) or not (
            factor is None or (isinstance(factor, (int, float)) and factor >= 1)
        ):
            raise ReleaseError(
                f"index.json: expected search {{leaves_to_search: int >= 1, reorder_factor: >= 1}} "
                f"(or nulls), got {raw!r}"
            )
        return cls(leaves, None if factor is None else float(factor))


def search(
    searcher: Any, queries: np.ndarray, k: int, params: SearchParams = SearchParams()
) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n, k], scores [n, k]) from a ScaNN searcher's ``search_batched`` under ``params``."""
    extra: dict[str, int] = {}
    if params.leaves_to_search is not None:
        extra["leaves_to_search"] = params.leaves_to_search
    reorder = params.pre_reorder(k)
    if reorder is not None:
        extra["pre_reorder_num_neighbors"] = reorder
    rows, scores = searcher.search_batched(queries, final_num_neighbors=k, **extra)
    return np.asarray(rows), np.asarray(scores)
