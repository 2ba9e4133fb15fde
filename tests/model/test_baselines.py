"""Item-kNN, iALS plumbing and baseline tuning on a validation carve; numpy only (no `implicit`, no TF models).

In the model tier all the same: importing any `trainer` module imports TensorFlow (trainer/__init__.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from funnel.data.loaders import Interactions
from trainer.baselines import (
    EvalSet,
    hit_rates,
    ials_factors,
    item_knn_weights,
    item_similarity,
    keep_neighbors,
    popularity_counts,
    rank_by_scores,
    training_matrix,
)
from trainer.tuning import (
    BASELINES,
    Grids,
    baseline_scorer,
    coordinate_search,
    tune_baselines,
    tuned_baselines,
    validation_carve,
)

GROUP_ITEMS = 12  # planted: items 1..12 are group 0, 13..24 group 1; each user rates 10 of their group's items
CATALOG = np.arange(1, 2 * GROUP_ITEMS + 1, dtype=np.int64)
GOOD_REGULARIZATION = 10.0  # the fake factorizer's only setting that scores a user's own group first
SMALL = Grids(
    ease_lambdas=(1.0, 10.0),
    knn_neighbors=(2, None),
    knn_shrinks=(0.0,),
    ials_factors=(2,),
    ials_regularizations=(0.1, 1.0, GOOD_REGULARIZATION),
    ials_alphas=(1.0,),
    ials_iterations=3,
)


def _interactions(rows: list[tuple[str, int]]) -> Interactions:
    """One interaction per (user, item), timestamps in list order."""
    users, items = zip(*rows, strict=True)
    n = len(rows)
    return Interactions(
        np.array(users, dtype=np.str_),
        np.array(items, dtype=np.int64),
        np.full(n, 3.0, dtype=np.float32),
        np.arange(n, dtype=np.int64),
    )


def _planted(users_per_group: int = 6, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    rows = []
    for group in (0, 1):
        for u in range(users_per_group):
            items = group * GROUP_ITEMS + 1 + rng.permutation(GROUP_ITEMS)[:10]
            rows += [(f"g{group}u{u}", int(item)) for item in items]
    return _interactions(rows)


def _fake_factorizer(calls: list):
    """Group-indicator factors; any regularization but GOOD_REGULARIZATION swaps the item groups (other group first)."""

    def factorize(history, *, factors, regularization, alpha, iterations, seed):
        calls.append((history.copy(), regularization))
        second = np.arange(history.shape[1]) >= GROUP_ITEMS
        items = np.stack([~second, second], axis=1).astype(np.float64)
        users = history.astype(np.float64) @ items
        return users, items if regularization == GOOD_REGULARIZATION else items[:, ::-1]

    return factorize


# ------------------------------------------------------------------------------------------------------ item-kNN


def test_item_knn_ranks_a_users_unseen_own_group_items_first():
    # Group A = items 1-4, group B = items 5-8 (more popular); "a0" has 1 and 2 and is tested on 3 and 4.
    group_a = [(f"a{u}", i) for u in (1, 2, 3) for i in (1, 2, 3, 4)]
    train = _interactions(group_a + [(f"b{u}", i) for u in range(5) for i in (5, 6, 7, 8)] + [("a0", 1), ("a0", 2)])
    data = EvalSet.build(train, _interactions([("a0", 3), ("a0", 4)]), np.arange(1, 9))
    for neighbors in (3, None):
        scorer = baseline_scorer("item_knn", {"neighbors": neighbors, "shrink": 0.0}, train, data)
        assert sorted(rank_by_scores(scorer, data).unseen.tolist()) == [0, 1]
    assert rank_by_scores(baseline_scorer("popularity", {}, train, data), data).unseen.min() >= 4


def test_item_knn_keeps_exactly_neighbors_per_item_the_most_similar():
    history = np.random.default_rng(0).random((60, 15)) < 0.6
    similarity = item_similarity(history)
    assert np.all(np.diag(similarity) == 0) and np.all(similarity[~np.eye(15, dtype=bool)] > 0)
    weights = item_knn_weights(history, 4)
    assert (np.count_nonzero(weights, axis=1) == 4).all()
    np.testing.assert_allclose(np.sort(weights, axis=1)[:, -4:], np.sort(similarity, axis=1)[:, -4:])
    np.testing.assert_array_equal(item_knn_weights(history, None), similarity)
    with pytest.raises(ValueError, match="neighbors"):
        keep_neighbors(similarity, 0)


def test_item_similarity_is_shrunk_cosine():
    history = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 1]], dtype=bool)
    similarity = item_similarity(history, shrink=2.0)
    assert similarity[0, 1] == pytest.approx(2 / (np.sqrt(3 * 2) + 2.0))
    assert similarity[2, 0] == pytest.approx(2 / (np.sqrt(3 * 3) + 2.0))
    with pytest.raises(ValueError, match="shrink"):
        item_similarity(history, shrink=-1.0)


# -------------------------------------------------------------------------------------------------------- tuning


def test_coordinate_search_finds_a_separable_optimum_and_keeps_the_first_of_ties():
    evaluated = []

    def score(p):
        evaluated.append(p)
        return -((p["a"] - 3) ** 2) - abs(p["b"])

    best, value, tried = coordinate_search({"a": (0, 1, 2, 3), "b": (-1, 0, 1)}, score, passes=3)
    assert (best, value) == ({"a": 3, "b": 0}, 0)
    assert tried == len(evaluated) == len({tuple(p.values()) for p in evaluated})  # each setting scored once
    assert coordinate_search({"a": (0, 1, 2)}, lambda p: 1.0, passes=3)[0] == {"a": 1}  # start kept on ties


def test_tuning_picks_the_best_setting_on_validation_and_never_reads_the_test_part():
    train = _planted()
    # Test pairs from the other group's first items: the swapped (bad) factors rank them above the good ones do.
    test = _interactions([(f"g{g}u{u}", (1 - g) * GROUP_ITEMS + i) for g in (0, 1) for u in range(6) for i in (1, 2)])
    data = EvalSet.build(train, test, CATALOG)
    calls: list = []
    fake = _fake_factorizer(calls)
    good, bad = ({"factors": 2, "regularization": r, "alpha": 1.0, "iterations": 3} for r in (GOOD_REGULARIZATION, 1.0))
    on_test = {
        r["regularization"]: rank_by_scores(baseline_scorer("ials", r, train, data, factorize=fake), data).unseen
        for r in (good, bad)
    }
    assert (on_test[1.0] < on_test[GOOD_REGULARIZATION]).all()

    records = tune_baselines(train, CATALOG, grids=SMALL, factorize=fake)
    assert records["ials"]["params"] == good and records["ials"]["validation_recall_at_10"] == 1.0
    fit, validation = validation_carve(train, CATALOG)
    recalls = [
        hit_rates(rank_by_scores(baseline_scorer("ease", {"lam": lam}, fit, validation), validation, 10).unseen, [10])[
            10
        ]
        for lam in SMALL.ease_lambdas
    ]
    assert records["ease"]["validation_recall_at_10"] == max(recalls)

    calls.clear()
    positions, tuned = tuned_baselines(train, data, grids=SMALL, factorize=fake)
    assert tuned == records  # the test pairs change nothing
    assert list(positions) == list(BASELINES) and all(len(p.unseen) == len(test) for p in positions.values())
    history, regularization = calls[-1]  # the refit: the chosen setting on the whole training part
    assert regularization == GOOD_REGULARIZATION
    np.testing.assert_array_equal(history, training_matrix(train, CATALOG))
    np.testing.assert_array_equal(positions["ials"].unseen, on_test[GOOD_REGULARIZATION])


def test_cold_users_get_popularity_scores():
    train = _planted()
    data = EvalSet.build(train, _interactions([("g0u0", 2), ("newcomer", 3)]), CATALOG)
    cold = int(np.flatnonzero(data.users == "newcomer")[0])
    assert data.cold[cold] and data.cold.sum() == 1
    counts = popularity_counts(train, CATALOG)
    params = {
        "popularity": {},
        "item_knn": {"neighbors": 5, "shrink": 0.0},
        "ease": {"lam": 10.0},
        "ials": {"factors": 2, "regularization": GOOD_REGULARIZATION, "alpha": 1.0, "iterations": 3},
    }
    for name in BASELINES:
        scores = baseline_scorer(name, params[name], train, data, factorize=_fake_factorizer([]))(np.arange(2))
        np.testing.assert_array_equal(scores[cold], counts, err_msg=name)
        if name != "popularity":
            assert not np.array_equal(scores[1 - cold], counts), name


def test_ials_factors_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)  # as if `implicit` were not installed
    with pytest.raises(ImportError, match="implicit==0.7.3"):
        ials_factors(np.ones((2, 2), dtype=bool), factors=2, regularization=0.1, alpha=1.0, iterations=1)


def test_tuning_rejects_a_training_part_too_small_to_hold_out_validation():
    with pytest.raises(ValueError, match="at least 5 interactions"):
        tune_baselines(_interactions([("u", 1), ("u", 2), ("v", 1)]), CATALOG, grids=SMALL)
