"""Evaluation harness: shared top-K metrics, baselines, the temporal split and a small end-to-end `trainer.eval` run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from funnel.data.loaders import Interactions
from tests.helpers import synthetic_dataset
from trainer import baselines
from trainer import eval as evaluation
from trainer.baselines import (
    ABSENT,
    EvalSet,
    catalog_positions,
    ease_weights,
    global_mean_rmse,
    hit_rates,
    list_positions,
    ndcg_at_k,
    popularity_counts,
    rank_baselines,
    rank_by_scores,
    top_k_unseen,
)
from trainer.split import make_split, seeds_split, temporal_split, validation_split
from trainer.tuning import Grids


def _interactions(users: list[str], items: list[int], ratings: list[float] | None = None) -> Interactions:
    n = len(users)
    return Interactions(
        np.array(users, dtype=np.str_),
        np.array(items, dtype=np.int64),
        np.array(ratings or [3.0] * n, dtype=np.float32),
        np.arange(n, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------------------ metrics


def test_hit_rates_count_positions_below_each_k():
    positions = np.array([0, 1, 4, ABSENT])
    assert hit_rates(positions, [1, 2, 5, 200]) == {1: 0.25, 2: 0.5, 5: 0.75, 200: 0.75}
    with pytest.raises(ValueError):
        hit_rates(np.array([], dtype=np.int64), [1])


def test_list_positions_find_each_target_in_its_users_list():
    lists = np.array([[7, 3, 5], [2, -1, -1]])
    rows, targets = np.array([0, 0, 1, 1, 0]), np.array([3, 7, 2, 9, 6])
    assert list_positions(lists, rows, targets).tolist() == [1, 0, 0, ABSENT, ABSENT]


def test_top_k_unseen_removes_seen_items_breaks_ties_by_column_and_pads():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 2.0, 3.0, 4.0]])
    seen = np.array([[False, True, False, False], [True, True, True, False]])
    assert top_k_unseen(scores, seen, 3).tolist() == [[0, 2, 3], [3, -1, -1]]
    assert top_k_unseen(scores, seen, 6).tolist() == [[0, 2, 3, -1, -1, -1], [3, -1, -1, -1, -1, -1]]


def test_catalog_positions_count_seen_items_and_rank_ties_by_catalog_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    rows, cols = np.zeros(4, dtype=np.int64), np.arange(4)
    assert catalog_positions(scores, rows, cols).tolist() == [1, 0, 2, 3]


def test_rank_by_scores_yields_both_positions_independent_of_the_score_block(monkeypatch):
    # Two users, four items; user a saw item 10, user b saw nothing. Scores prefer low columns.
    train = _interactions(["a"], [10])
    test = _interactions(["a", "a", "b", "b"], [11, 13, 10, 13])
    data = EvalSet.build(train, test, np.array([10, 11, 12, 13]))

    def scorer(rows):
        return np.tile([4.0, 3.0, 2.0, 1.0], (len(rows), 1))

    expected_unseen, expected_catalog = [0, 2, 0, 3], [1, 3, 0, 3]
    for block in (1 << 22, 4):  # one row per block
        monkeypatch.setattr(baselines, "SCORE_BLOCK", block)
        positions = rank_by_scores(scorer, data, k=3)
        assert positions.unseen.tolist() == [0, 2, 0, ABSENT]
        assert positions.incl_seen.tolist() == expected_catalog
        assert rank_by_scores(scorer, data, k=4).unseen.tolist() == expected_unseen
    assert hit_rates(rank_by_scores(scorer, data, k=3).unseen, [1, 3]) == {1: 0.5, 3: 0.75}


def test_ndcg_at_k_by_hand():
    # User 0 has test pairs at positions 0 and 2: DCG 1 + 1/log2(4) = 1.5 of an ideal 1 + 1/log2(3); user 1's one
    # pair is missing (ABSENT), user 2's sits at position 10, outside the top 10: both 0. The mean is over users.
    positions, rows = np.array([0, 2, ABSENT, 10]), np.array([0, 0, 1, 2])
    assert ndcg_at_k(positions, rows, 10) == pytest.approx((1.5 / (1 + 1 / np.log2(3))) / 3)
    assert ndcg_at_k(positions, rows, 11) == pytest.approx((1.5 / (1 + 1 / np.log2(3)) + 1 / np.log2(12)) / 3)
    assert ndcg_at_k(np.array([1]), np.array([5]), 10) == pytest.approx(1 / np.log2(3))  # one pair, second place
    with pytest.raises(ValueError):
        ndcg_at_k(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 10)


def test_eval_set_holds_the_training_items_of_the_test_users():
    train = _interactions(["b", "a", "c", "a"], [12, 11, 10, 10])
    test = _interactions(["a", "d", "a"], [12, 11, 10])
    data = EvalSet.build(train, test, np.array([12, 10, 11]))
    assert data.users.tolist() == ["a", "d"]
    assert data.seen.tolist() == [[False, True, True], [False, False, False]]
    assert data.pair_rows.tolist() == [0, 1, 0] and data.pair_cols.tolist() == [0, 2, 1]
    assert data.cold.tolist() == [False, True]
    with pytest.raises(ValueError, match="item id 99"):
        EvalSet.build(train, _interactions(["a"], [99]), np.array([10, 11, 12]))


# ---------------------------------------------------------------------------------------------------- baselines


def test_global_mean_and_popularity():
    train = _interactions(["a", "a", "b"], [1, 2, 2], [1.0, 2.0, 3.0])
    test = _interactions(["b", "c"], [1, 3], [2.0, 4.0])
    assert global_mean_rmse(train, test) == pytest.approx(np.sqrt(2.0))
    assert popularity_counts(train, np.array([3, 2, 1])).tolist() == [0.0, 2.0, 1.0]
    data = EvalSet.build(train, test, np.array([1, 2, 3]))
    positions = rank_baselines(train, data)["popularity"]
    # b saw 2, so its list is [1, 3]; c is cold and gets [2, 1, 3]. Seen items counted: 1 is 2nd, 3 is 3rd.
    assert positions.unseen.tolist() == [0, 2] and positions.incl_seen.tolist() == [1, 2]


def test_ease_matches_a_ridge_regression_of_each_item_on_the_others():
    rng = np.random.default_rng(3)
    x = (rng.random((12, 5)) < 0.4).astype(np.float64)
    lam = 2.0
    b = ease_weights(x, lam)
    assert np.all(np.diag(b) == 0.0)
    for j in range(5):
        others = [i for i in range(5) if i != j]
        a = x[:, others]
        direct = np.linalg.solve(a.T @ a + lam * np.eye(4), a.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], direct, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------------------------- split


def test_temporal_split_trains_on_the_past_with_ties_in_file_order():
    timestamps = np.array([50, 10, 30, 30, 20, 30, 40, 30, 60, 5])
    train, test = temporal_split(timestamps)
    assert train.tolist() == [9, 1, 4, 2, 3, 5, 7, 6] and test.tolist() == [0, 8]
    assert timestamps[train].max() <= timestamps[test].min()
    train, test = temporal_split(np.array([7, 7, 7, 7, 7]), train_fraction=0.6)  # all tied: file order
    assert (train.tolist(), test.tolist()) == ([0, 1, 2], [3, 4])
    with pytest.raises(ValueError):
        temporal_split(np.array([1]))
    with pytest.raises(ValueError):
        temporal_split(np.arange(4), train_fraction=1.0)


def test_make_split_dispatches_by_name():
    interactions = _interactions(["a"] * 10, list(range(10)))
    interactions = Interactions(
        interactions.user_ids, interactions.item_ids, interactions.ratings, np.arange(10)[::-1].copy()
    )
    for got, want in zip(make_split("seeds", interactions, seed=5), seeds_split(10, seed=5)):
        assert got.tolist() == want.tolist()
    train, test = make_split("temporal", interactions)
    assert train.tolist() == [9, 8, 7, 6, 5, 4, 3, 2] and test.tolist() == [1, 0]
    for got, want in zip(make_split("validation", interactions, seed=5), validation_split(10, seed=5)):
        assert got.tolist() == want.tolist()
    with pytest.raises(ValueError, match="'random'"):
        make_split("random", interactions)


def test_validation_split_holds_out_part_of_the_seeds_training_part_only():
    fit, held = validation_split(1000, seed=42)
    train, test = seeds_split(1000, seed=42)
    assert (len(fit), len(held)) == (720, 80)
    assert sorted(fit.tolist() + held.tolist()) == sorted(train.tolist())  # a partition of the training part
    assert not set(held.tolist()) & set(test.tolist())
    position = {index: k for k, index in enumerate(train.tolist())}
    for part in (fit, held):  # in the training part's order
        assert np.all(np.diff([position[i] for i in part.tolist()]) > 0)
    assert all(a.tolist() == b.tolist() for a, b in zip(validation_split(1000, seed=42), (fit, held)))
    assert validation_split(1000, seed=7)[1].tolist() != held.tolist()  # it follows the seeds split's seed
    with pytest.raises(ValueError, match="fraction"):
        validation_split(1000, fraction=1.0)


# ----------------------------------------------------------------------------------------------------- end to end


def _svd_factors(history, *, factors, regularization, alpha, iterations, seed):
    """A numpy stand-in for implicit's iALS (not installed for tests): the history's truncated SVD."""
    u, s, vt = np.linalg.svd(history.astype(np.float64), full_matrices=False)
    return u[:, :factors] * s[:factors], vt[:factors].T


def _by_hand(split: str) -> dict[str, float]:
    """What `trainer.eval` must report on `synthetic_dataset` for the metrics that follow from counting alone.

    The catalog holds 80 items, so every model places every test item the user has not rated in training within
    its top 100 (recall@100 is the share of such pairs; 1.0 counting seen items too), and popularity's order is
    the training counts (ties in catalog order), computed here pair by pair.
    """
    data = synthetic_dataset()
    train_idx, test_idx = make_split(split, data.interactions, seed=42)
    train, test = data.interactions.take(train_idx), data.interactions.take(test_idx)
    catalog = data.items.item_ids.tolist()
    counts = {item: int(np.sum(train.item_ids == item)) for item in catalog}
    seen: dict[str, set[int]] = {}
    for user, item in zip(train.user_ids.tolist(), train.item_ids.tolist()):
        seen.setdefault(user, set()).add(item)
    positions: dict[str, list[int | None]] = {}
    for user, item in zip(test.user_ids.tolist(), test.item_ids.tolist()):
        order = sorted((i for i in catalog if i not in seen[user]), key=lambda i: (-counts[i], catalog.index(i)))
        positions.setdefault(user, []).append(order.index(item) if item in order else None)
    pairs = [p for user_positions in positions.values() for p in user_positions]
    ndcg = [
        sum(1 / np.log2(p + 2) for p in found if p is not None and p < 10)
        / sum(1 / np.log2(k + 2) for k in range(min(len(found), 10)))
        for found in positions.values()
    ]
    per_user = np.bincount(np.unique(train.user_ids, return_inverse=True)[1])
    return {
        "unseen_share": np.mean([p is not None for p in pairs]),
        "popularity_recall_at_10": np.mean([p is not None and p < 10 for p in pairs]),
        "popularity_ndcg_at_10": float(np.mean(ndcg)),
        "global_mean_rmse": float(np.sqrt(np.mean((test.ratings - np.mean(train.ratings, dtype=np.float64)) ** 2))),
        "trainer_held_out": int(np.sum(per_user // 5)),  # the trainer holds out each user's latest fifth (rounded down)
        "num_train": len(train),
    }


def test_eval_prints_the_recent_metrics_with_seeds_nested_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "load_dataset", lambda spec, cache_dir: synthetic_dataset())
    monkeypatch.setattr(evaluation, "BASELINE_FACTORIZER", _svd_factors)
    monkeypatch.setattr(
        evaluation,
        "BASELINE_GRIDS",
        Grids(
            ease_lambdas=(10.0, 100.0),
            knn_neighbors=(10, None),
            knn_shrinks=(0.0,),
            ials_factors=(4, 8),
            ials_regularizations=(1.0,),
            ials_alphas=(1.0,),
        ),
    )
    out = tmp_path / "report"
    assert evaluation.main(["--out", str(out), "--cache-dir", str(tmp_path), "--epochs", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    baselines = ("popularity", "item_knn", "ease", "ials")
    for metrics, split in ((result, "recent"), (result["seeds"], "seeds")):
        expected = _by_hand(split)
        assert metrics["split"] == split and (metrics["num_train"], metrics["num_test"]) == (1440, 360)
        assert expected["num_train"] == 1440
        # The trainer job was given the training part alone, and held out its own latest fifth of it.
        held_out = metrics["trainer_held_out"]
        assert held_out == {
            "split": "recent",
            "num_train": 1440 - expected["trainer_held_out"],
            "num_test": expected["trainer_held_out"],
        }
        share = pytest.approx(expected["unseen_share"], abs=1e-4)  # the metrics are rounded to 4 places
        assert 0 < expected["unseen_share"] < 1  # some test items were rated in training too: those never count
        assert metrics["recall_at_100"] == share and metrics["retrieval_top100_incl_seen"] == 1.0
        for name in baselines:
            assert metrics["baselines"][f"{name}_recall_at_100"] == share, name
            assert metrics["baselines"][f"{name}_top100_incl_seen"] == 1.0, name
        assert metrics["baselines"]["popularity_recall_at_10"] == pytest.approx(
            expected["popularity_recall_at_10"], abs=1e-4
        )
        assert metrics["baselines"]["popularity_ndcg_at_10"] == pytest.approx(
            expected["popularity_ndcg_at_10"], abs=1e-4
        )
        assert metrics["baselines"]["global_mean_rmse"] == pytest.approx(expected["global_mean_rmse"], abs=1e-4)
        # The trained models' figures are the models' own; they are shares, and ranking them is consistent.
        for key in ("recall_at_10", "pipeline_recall_at_10", "pipeline_ndcg_at_10", "pipeline_by_history_recall_at_10"):
            assert 0.0 <= metrics[key] <= metrics["recall_at_100"], key
        assert metrics["ranking_rmse"] > 0
        assert set(metrics["baseline_tuning"]) == set(baselines)
        best = metrics["best_baseline"]
        assert metrics["baselines"][f"{best}_recall_at_10"] == max(
            metrics["baselines"][f"{b}_recall_at_10"] for b in baselines
        )
        assert metrics["pipeline_vs_best_recall_at_10"] == pytest.approx(
            metrics["pipeline_recall_at_10"] / metrics["baselines"][f"{best}_recall_at_10"], abs=2e-3
        )
    assert result["cold_test_users"] == 0  # every user keeps their earlier 80% in training
    assert {p.name for p in out.iterdir()} == {"report.md", "metrics.json", "recall_at_k.png", "training_curves.png"}
    assert json.loads((out / "metrics.json").read_text()) == result
    assert "## seeds split" in (out / "report.md").read_text()


def test_eval_rejects_unknown_or_repeated_splits(capsys):
    for flags in (["--splits", "seeds,random"], ["--splits", "seeds,seeds"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            evaluation.parse_args(flags)
    assert evaluation.parse_args(["--splits", "temporal"]).splits == ["temporal"]
    assert evaluation.parse_args(["--splits", "validation"]).splits == ["validation"]
    assert evaluation.parse_args(["--splits", "recent"]).splits == ["recent"]
    assert evaluation.parse_args([]).splits == ["recent", "seeds"]  # temporal and validation only on request
