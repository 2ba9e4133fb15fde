"""Search settings from index.json, and how they reach ScaNN's search_batched."""

from __future__ import annotations

import numpy as np
import pytest

from funnel.errors import ReleaseError
from funnel.release.ann import SearchParams, search


class RecordingSearcher:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def search_batched(self, queries: np.ndarray, **kwargs: int) -> tuple[list, list]:
        self.calls.append(kwargs)
        k = kwargs["final_num_neighbors"]
        return [list(range(k))] * len(queries), [[1.0] * k] * len(queries)


def test_index_json_without_settings_keeps_the_searchers_own() -> None:
    searcher = RecordingSearcher()
    rows, scores = search(searcher, np.zeros((2, 4), np.float32), 5, SearchParams.from_index_meta({}))
    assert searcher.calls == [{"final_num_neighbors": 5}]
    assert rows.shape == scores.shape == (2, 5)


def test_tuned_settings_scale_the_rescoring_with_k() -> None:
    params = SearchParams.from_index_meta({"search": {"leaves_to_search": 50, "reorder_factor": 2.5}})
    searcher = RecordingSearcher()
    search(searcher, np.zeros((1, 4), np.float32), 130, params)
    search(searcher, np.zeros((1, 4), np.float32), 1, SearchParams(7, 1.0))
    assert searcher.calls == [
        {"final_num_neighbors": 130, "leaves_to_search": 50, "pre_reorder_num_neighbors": 325},
        {"final_num_neighbors": 1, "leaves_to_search": 7, "pre_reorder_num_neighbors": 1},
    ]
    assert SearchParams.from_index_meta({"search": params.to_json()}) == params


@pytest.mark.parametrize(
    "raw",
    [
        {"leaves_to_search": 0, "reorder_factor": 2},
        {"leaves_to_search": 5, "reorder_factor": 0.5},
        {"leaves_to_search": "50"},
        [50, 2],
        "fast",
    ],
)
def test_malformed_settings_refuse_the_release(raw: object) -> None:
    with pytest.raises(ReleaseError, match="index.json: expected search"):
        SearchParams.from_index_meta({"search": raw})
