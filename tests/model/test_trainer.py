"""Trainer tests: reference split, retrieval model, SavedModel export, ScaNN index, evaluation, a pipeline run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from funnel.tf import tf

import numpy as np
import pytest
import scann

from funnel.release.ann import SearchParams
from funnel.release.files import read_seen
from funnel.release.store import CANDIDATE_TOWER_DIR, INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR, SIDECAR, ArtifactStore
from tests.helpers import GROUPS, NUM_ITEMS, NUM_USERS, small_ranking_config, small_retrieval_config, synthetic_dataset
from trainer import evaluate, export
from trainer.__main__ import parse_args
from trainer.evaluate import embed_users, evaluate_release, factorized_top_k, recall_unseen
from trainer.export import candidate_tower_fingerprint, export_candidate_tower, export_query_tower
from trainer.gate import GateConfig
from trainer.index import (
    ITEM_IDS_FILE,
    IndexConfig,
    RecallTooLow,
    build_index,
    build_searcher,
    exact_top_k,
    measure_recall,
    search_ladder,
    tree_params,
    tune_search,
)
from trainer.models import (
    Histories,
    QueryTower,
    RetrievalConfig,
    evaluate_retrieval,
    history_positions,
    item_tower,
    recency_bucket,
    train_retrieval,
)
from trainer.pipeline import PipelineConfig, run
from trainer.ranking import RankingConfig, evaluate_rmse, export_ranker, train_ranker
from trainer.split import seeds_split

RANKING_CONFIG = small_ranking_config()
RETRIEVAL_CONFIG = small_retrieval_config()
DIM = RETRIEVAL_CONFIG.embedding_dim


@pytest.fixture(scope="module")
def trained():
    data = synthetic_dataset()
    train_idx, test_idx = seeds_split(len(data.interactions))
    train, test = data.interactions.take(train_idx), data.interactions.take(test_idx)

    def as_features(x):
        return {"user_id": x.user_ids, "item_id": x.item_ids}

    user_vocab, item_vocab = np.unique(train.user_ids), data.items.item_ids
    histories = Histories(train.user_ids, train.item_ids, train.timestamps)
    retrieval = train_retrieval(as_features(train), item_vocab, RETRIEVAL_CONFIG, verbose=False, histories=histories)
    ranking = train_ranker(train, data, RANKING_CONFIG, verbose=False)
    return {
        "data": data,
        "train": train,
        "test": test,
        "user_vocab": user_vocab,
        "item_vocab": item_vocab,
        "histories": histories,
        "retrieval": retrieval,
        "ranking": ranking,
        "top_k": evaluate_retrieval(retrieval, as_features(test), histories),
        "rmse": evaluate_rmse(ranking, test),
        "mean_rating_rmse": float(np.sqrt(np.mean((test.ratings - train.ratings.mean()) ** 2))),
    }


# ---------------------------------------------------------------------------------------------------- split


def test_seeds_split_is_the_seeded_shuffle_cut_80_20():
    # The permutations tf.data's seeded shuffle gives 10 records (tf.random.set_seed(s); .shuffle(10, seed=s,
    # reshuffle_each_iteration=False)) for seeds 42 and 7: the first 8 train, the last 2 test.
    for seed, train, test in ((42, [3, 2, 4, 9, 6, 1, 7, 0], [8, 5]), (7, [2, 6, 5, 0, 7, 4, 8, 9], [1, 3])):
        got = seeds_split(10, seed=seed)
        assert [a.tolist() for a in got] == [train, test] and got[0].dtype == got[1].dtype == np.int64
    assert [a.tolist() for a in seeds_split(10, train_fraction=0.5)] == [[3, 2, 4, 9, 6], [1, 7, 0, 8, 5]]
    train, test = seeds_split(1000)
    assert (train[:8].tolist(), test[:8].tolist()) == (
        [633, 353, 226, 578, 24, 306, 487, 444],
        [39, 247, 351, 96, 565, 758, 742, 254],
    )
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))  # a partition of every index


def test_seeds_split_of_movielens_size_matches_the_tutorial_shuffle():
    train, test = seeds_split(100_000)
    assert (len(train), len(test)) == (80_000, 20_000)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100_000))
    # The tutorial shuffles the ratings dataset itself; the permutation does not depend on the elements.
    tf.random.set_seed(42)
    records = tf.data.Dataset.from_tensor_slices(np.arange(100_000) * 7)
    shuffled = records.shuffle(100_000, seed=42, reshuffle_each_iteration=False).take(5)
    assert [int(x) // 7 for x in shuffled] == train[:5].tolist()


@pytest.mark.parametrize("n, fraction", [(1, 0.8), (10, 0.0), (10, 1.0)])
def test_seeds_split_rejects_bad_arguments(n, fraction):
    with pytest.raises(ValueError, match="expected"):
        seeds_split(n, train_fraction=fraction)


# ---------------------------------------------------------------------------------------------------- models


def _query(model, user_ids: list[str], histories: list[list[int]]) -> np.ndarray:
    padded = np.full((len(histories), max(1, *map(len, histories))), -1, dtype=np.int64)
    for row, items in enumerate(histories):
        padded[row, : len(items)] = items
    return model.query_tower({"user_id": tf.constant(user_ids), "history": tf.constant(padded)}).numpy()


def _group(item_id: int) -> int:
    return (item_id - 1000) // 3 // (NUM_ITEMS // GROUPS)


def _group_auc(model, item_vocab: np.ndarray, user_ids: list[str], histories: list[list[int]]) -> float:
    """Mean chance that an unseen item of the history's taste group outscores an unseen item of another group."""
    scores = _query(model, user_ids, histories) @ model.candidate_tower(tf.constant(item_vocab)).numpy().T
    aucs = []
    for row, items in zip(scores, histories):
        unseen = ~np.isin(item_vocab, items)
        same = np.array([_group(i) == _group(items[0]) for i in item_vocab])
        aucs.append(np.mean(row[unseen & same][:, None] > row[unseen & ~same][None, :]))
    return float(np.mean(aucs))


def test_models_learn_the_planted_groups(trained):
    assert trained["top_k"]["top_10"] > 2 * 10 / NUM_ITEMS  # twice a random ranking of the 80 items
    assert trained["top_k"]["top_1"] <= trained["top_k"]["top_5"] <= trained["top_k"]["top_10"]
    assert trained["rmse"] < 0.85 * trained["mean_rating_rmse"]  # clearly better than predicting the mean


def test_retrieval_embeds_history_alone_for_known_and_new_users(trained):
    model, item_vocab, histories = trained["retrieval"], trained["item_vocab"], trained["histories"]
    users = [f"user{u}" for u in range(8)]
    liked = [[i for i in histories.get(u).tolist() if _group(i) == n % GROUPS] for n, u in enumerate(users)]
    assert _group_auc(model, item_vocab, users, liked) > 0.9  # a random ranking scores 0.5
    strangers = [f"new{u}" for u in range(8)]  # no id embedding: the history alone must carry the taste
    assert _group_auc(model, item_vocab, strangers, [h[:5] for h in liked]) > 0.9


def test_retrieval_training_is_deterministic_and_the_sampled_softmax_learns(trained):
    data, histories = trained["data"], trained["histories"]
    train = data.interactions.take(seeds_split(len(data.interactions))[0])
    features = {"user_id": train.user_ids, "item_id": train.item_ids}
    config = replace(RETRIEVAL_CONFIG, full_softmax_max_items=NUM_ITEMS - 1)  # in-batch softmax, logQ-corrected
    sampled = train_retrieval(features, trained["item_vocab"], config, verbose=False)
    again = train_retrieval(features, trained["item_vocab"], config, verbose=False)
    for a, b in zip(sampled.get_weights(), again.get_weights(), strict=True):
        assert np.array_equal(a, b)
    test = trained["test"]
    top_k = evaluate_retrieval(sampled, {"user_id": test.user_ids, "item_id": test.item_ids}, histories)
    assert top_k["top_10"] > 2 * 10 / NUM_ITEMS


def test_recency_weights_start_at_a_decay_by_place_from_the_end_and_training_sees_only_the_past():
    assert recency_bucket(tf.constant([0, 5, 31, 32, 63, 64, 10**6], tf.int64)).numpy().tolist() == [
        0,
        5,
        31,
        32,
        35,
        36,
        63,
    ]
    tower = QueryTower(np.array([1, 2, 3], np.int64), replace(RETRIEVAL_CONFIG, recency_scale=10.0))
    weights = np.exp(tower.position_logits.numpy())
    np.testing.assert_allclose(weights[:3], np.exp(-np.arange(3) / 10.0), rtol=1e-6)
    assert np.all(np.diff(weights) <= 0) and weights.min() > 0
    # A query cut to its first `length` items equals the query of those items alone.
    history = tf.constant([[1, 2, 3], [3, -1, 2]], tf.int64)
    cut = tower({"user_id": tf.constant(["a", "b"]), "history": history, "length": tf.constant([2, 1], tf.int64)})
    alone = tower({"user_id": tf.constant(["a", "b"]), "history": tf.constant([[1, 2], [3, -1]], tf.int64)})
    np.testing.assert_allclose(cut.numpy(), alone.numpy(), rtol=1e-6)
    # Each training example's history length is the number of the user's items before it in time.
    histories = Histories(np.array(["u", "u", "u", "v"]), np.array([9, 7, 8, 7]), np.array([3, 1, 2, 0]))
    rows = histories.rows(np.array(["u", "u", "u", "v", "w"]))
    assert history_positions(histories, rows, np.array([7, 8, 9, 7, 7])).tolist() == [0, 1, 2, 0, 0]


def test_histories_hold_each_users_distinct_items_padded_with_minus_one():
    histories = Histories(np.array(["b", "a", "b", "b", "c"]), np.array([7, 3, 5, 7, 9]))
    assert histories.users.tolist() == ["a", "b", "c"] and histories.get("b").tolist() == [5, 7]
    assert histories.get("zz").tolist() == [] and histories.rows(np.array(["c", "zz", "a"])).tolist() == [2, -1, 0]
    assert histories.padded(np.array(["b", "zz", "a"])).tolist() == [[5, 7], [-1, -1], [3, -1]]
    assert histories.padded(np.array(["zz"])).tolist() == [[-1]]
    assert Histories(np.array([], dtype=str), np.array([], dtype=np.int64)).padded(np.array(["a"])).tolist() == [[-1]]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"epochs": 0}, "expected epochs >= 1, got 0"),
        ({"history_dropout": 1.0}, "expected 0 <= history_dropout < 1"),
        ({"hidden_dims": (0,)}, "expected positive hidden_dims"),
        ({"learning_rate": 0.0}, "expected learning_rate > 0"),
    ],
)
def test_retrieval_config_rejects_bad_values(change, expected):
    with pytest.raises(ValueError, match=expected):
        RetrievalConfig(**change)


# ---------------------------------------------------------------------------------------------------- export


def test_query_tower_savedmodel_matches_keras_and_ignores_padding_and_unknown_items(trained, tmp_path):
    tower = trained["retrieval"].query_tower
    export_query_tower(tower, tmp_path / "qt", candidate_fingerprint="abc", training_run="run-1")
    serve = tf.saved_model.load(str(tmp_path / "qt")).signatures["serving_default"]
    assert serve.structured_input_signature[1] == {
        "user_id": tf.TensorSpec([None], tf.string, name="user_id"),
        "history": tf.TensorSpec([None, None], tf.int64, name="history"),
    }
    assert set(serve.structured_outputs) == {"embedding"}
    users = tf.constant(["user3", "user17", "nobody-knows-me", "nobody-knows-me"])
    history = tf.constant([[1000, 1003, -1], [1006, -1, -1], [1009, 1012, 1015], [-1, -1, -1]], dtype=tf.int64)
    out = serve(user_id=users, history=history)["embedding"]
    assert out.dtype == tf.float32 and out.shape == (4, DIM)
    np.testing.assert_allclose(out.numpy(), tower({"user_id": users, "history": history}).numpy(), rtol=1e-6)
    assert not np.allclose(out[2], out[3])  # a new user's history counts
    # The same users and items in the same order, padded more and anywhere:
    history = tf.constant([[1000, -1, 1003, -1], [-1, 1006, -1, -1], [1009, 1012, 1015, -1]], dtype=tf.int64)
    same = serve(user_id=users[:3], history=history)["embedding"]
    np.testing.assert_allclose(same.numpy(), out.numpy()[:3], rtol=1e-5, atol=1e-6)
    # Items outside the catalog are not embedded (alone they are no history), but they keep their place in time,
    # as does the order of the others: the latest items weigh most.
    only_unknown = serve(user_id=users[3:], history=tf.constant([[5, 7]], dtype=tf.int64))["embedding"]
    np.testing.assert_allclose(only_unknown.numpy(), out.numpy()[3:], rtol=1e-5, atol=1e-6)
    reordered = serve(user_id=users[2:3], history=tf.constant([[1015, 1012, 1009]], dtype=tf.int64))["embedding"]
    later = serve(user_id=users[2:3], history=tf.constant([[1009, 1012, 1015, 4]], dtype=tf.int64))["embedding"]
    assert not np.allclose(reordered.numpy(), out.numpy()[2:3]) and not np.allclose(later.numpy(), out.numpy()[2:3])
    plain = replace(RETRIEVAL_CONFIG, recency=False, epochs=1)  # the plain mean ignores order and unknown items
    tower = train_retrieval(
        {"user_id": trained["train"].user_ids, "item_id": trained["train"].item_ids},
        trained["item_vocab"],
        plain,
        verbose=False,
    ).query_tower
    mixed = tf.constant([[1003, 5, 1000, -1], [-1, 1006, 7, -1], [1015, 1009, 1012, 4]], dtype=tf.int64)
    np.testing.assert_allclose(
        tower({"user_id": users[:3], "history": mixed}).numpy(),
        tower({"user_id": users[:3], "history": history}).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert json.loads((tmp_path / "qt" / SIDECAR).read_text()) == {
        "candidate_tower_fingerprint": "abc",
        "embedding_dim": DIM,
        "training_run": "run-1",
    }


def test_candidate_tower_savedmodel_embeds_items_like_keras_and_records_its_fingerprint(trained, tmp_path):
    tower = trained["retrieval"].candidate_tower
    fingerprint = export_candidate_tower(tower, tmp_path / "ct", training_run="run-3")
    serve = tf.saved_model.load(str(tmp_path / "ct")).signatures["serving_default"]
    assert serve.structured_input_signature[1] == {"item_id": tf.TensorSpec([None], tf.int64, name="item_id")}
    assert set(serve.structured_outputs) == {"embedding"}
    items = tf.constant([1000, 1237, 5], dtype=tf.int64)  # the last one is not in the catalog
    out = serve(item_id=items)["embedding"]
    assert out.dtype == tf.float32 and out.shape == (3, DIM)
    np.testing.assert_allclose(out.numpy(), tower(items).numpy(), rtol=1e-6)
    assert fingerprint == candidate_tower_fingerprint(tower)
    assert json.loads((tmp_path / "ct" / SIDECAR).read_text()) == {
        "candidate_tower_fingerprint": fingerprint,
        "training_run": "run-3",
    }


def test_candidate_tower_fingerprint_tracks_the_weights():
    tower = item_tower(np.arange(10, dtype=np.int64), 4)
    tower(tf.constant([1], dtype=tf.int64))  # build
    before = candidate_tower_fingerprint(tower)
    assert len(before) == 64 and before == candidate_tower_fingerprint(tower)
    weights = tower.get_weights()
    weights[0][3, 1] += 1e-6
    tower.set_weights(weights)
    assert candidate_tower_fingerprint(tower) != before


# ---------------------------------------------------------------------------------------------------- index


RUN = {"candidate_fingerprint": "fp", "training_run": "r"}


def _load(directory: Path) -> scann.scann_ops_pybind.ScannSearcher:
    return scann.scann_ops_pybind.load_searcher(str(directory / "scann"))


def test_brute_force_index_is_exact_and_survives_a_rename(trained, tmp_path):
    retrieval, item_vocab = trained["retrieval"], trained["item_vocab"]
    items = retrieval.candidate_tower(tf.constant(item_vocab)).numpy()
    users = trained["user_vocab"]
    queries = _query(retrieval, users.tolist(), [trained["histories"].get(u).tolist() for u in users])
    meta = build_index(tmp_path / "staging", item_vocab, items, queries, **RUN)
    assert meta == {
        "candidate_tower_fingerprint": "fp",
        "num_items": NUM_ITEMS,
        "embedding_dim": DIM,
        "distance": "dot_product",
        "searcher": "brute_force",
        "recall_at_100": 1.0,
        "training_run": "r",
        "search": {"leaves_to_search": None, "reorder_factor": None},
    }
    (tmp_path / "staging").rename(tmp_path / "published")
    index_dir = tmp_path / "published"
    assert json.loads((index_dir / "index.json").read_text()) == meta
    assert not list(index_dir.rglob("*.pkl"))
    ids = np.load(index_dir / "item_ids.npy", allow_pickle=False)
    assert ids.dtype == np.int64 and np.array_equal(ids, item_vocab)
    rows, scores = _load(index_dir).search_batched(queries[:5], final_num_neighbors=10)
    exact = np.argsort(-(queries[:5] @ items.T), axis=1)[:, :10]
    assert [set(r) for r in rows] == [set(e) for e in exact]
    np.testing.assert_allclose(scores[:, 0], (queries[:5] @ items.T).max(axis=1), rtol=1e-5)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    return (centers[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def test_tree_ah_index_for_large_catalogs_meets_recall_after_a_rename(tmp_path):
    items, queries = _clustered(5000, 16, seed=1), _clustered(300, 16, seed=2)
    item_ids = np.arange(5000, dtype=np.int64) * 2
    config = IndexConfig(brute_force_max_items=1000)
    meta = build_index(tmp_path / "a", item_ids, items, queries, **RUN, config=config)
    assert meta["searcher"] == "tree_ah" and meta["recall_at_100"] >= 0.95
    (tmp_path / "a").rename(tmp_path / "b")
    searcher = _load(tmp_path / "b")
    served = SearchParams.from_index_meta(meta)  # what the retrieval service will search with
    assert measure_recall(searcher, items, queries, 100, served) == meta["recall_at_100"]  # the same neighbours


def test_search_tuning_picks_the_cheapest_setting_that_reaches_the_target():
    items, queries = _clustered(5000, 16, seed=1), _clustered(300, 16, seed=2)
    searcher, kind = build_searcher(items, IndexConfig(brute_force_max_items=1000))
    params = tree_params(len(items))
    ladder = search_ladder(params)
    assert ladder[-1] == SearchParams(params.leaves_to_search, params.reorder / 100)  # the built-in setting last
    assert [s.leaves_to_search for s in ladder] == sorted(s.leaves_to_search for s in ladder)
    recalls = [measure_recall(searcher, items, queries, 100, s) for s in ladder]
    # ScaNN's tree training is not deterministic: the built-in setting reached 0.964-0.989 here. Wide margins.
    assert recalls[0] < 0.6 and recalls[-1] > 0.9  # the data makes the choice matter: cheap settings miss some
    for target in (0.5, 0.9, recalls[-1], 1.01):
        chosen, recall = tune_search(searcher, items, queries, params, target)
        first = next((i for i, r in enumerate(recalls) if r >= target), len(ladder) - 1)
        assert (chosen, recall) == (ladder[first], recalls[first])


def test_recall_gate_refuses_a_poor_index_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(3)  # unstructured vectors: approximate search misses some neighbours
    items, queries = rng.normal(size=(3000, 32)).astype(np.float32), rng.normal(size=(200, 32)).astype(np.float32)
    config = IndexConfig(brute_force_max_items=1000)  # default min_recall 0.95; this index reaches about 0.7
    with pytest.raises(RecallTooLow, match=r"expected index recall@100 >= 0.95, got 0\.\d+ \(tree_ah searcher\)"):
        build_index(tmp_path / "idx", np.arange(3000), items, queries, **RUN, config=config)
    assert not (tmp_path / "idx").exists()


def test_exact_top_k_in_chunks_matches_argsort():
    items, queries = _clustered(700, 8, seed=4), _clustered(50, 8, seed=5)
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :30]
    assert [set(r) for r in exact_top_k(items, queries, 30)] == [set(e) for e in expected]


# ---------------------------------------------------------------------------------------------------- evaluate


def _export_release(trained: dict, directory: Path) -> None:
    """The parts evaluate_release reads: both towers, the ranker and the index's item ids."""
    retrieval = trained["retrieval"]
    fingerprint = export_candidate_tower(retrieval.candidate_tower, directory / CANDIDATE_TOWER_DIR, training_run="r")
    export_query_tower(
        retrieval.query_tower, directory / QUERY_TOWER_DIR, candidate_fingerprint=fingerprint, training_run="r"
    )
    export_ranker(trained["ranking"], directory / RANKER_DIR, training_run="k")
    (directory / INDEX_DIR).mkdir()
    np.save(directory / INDEX_DIR / ITEM_IDS_FILE, trained["item_vocab"])


def test_release_evaluation_through_savedmodels_matches_the_in_memory_metrics(trained, tmp_path):
    retrieval, test, histories, items = (
        trained["retrieval"],
        trained["test"],
        trained["histories"],
        trained["item_vocab"],
    )
    _export_release(trained, tmp_path)
    result = evaluate_release(tmp_path, test, histories, batch_size=100)
    assert result.top_k.keys() == trained["top_k"].keys() == result.recall.keys()
    for k, in_memory in trained["top_k"].items():  # top_100 is trivially 1 with 80 items; the others are not
        assert result.top_k[k] == pytest.approx(in_memory, abs=0.005), k
    assert 0 < result.top_k["top_5"] < result.top_k["top_50"] < 1
    assert result.rmse == pytest.approx(trained["rmse"], rel=1e-4)
    # Recall as served: each user's training items leave the ranking before the top K is cut.
    scores = _query(retrieval, test.user_ids.tolist(), [histories.get(u).tolist() for u in test.user_ids])
    scores = scores @ retrieval.candidate_tower(tf.constant(items)).numpy().T
    ranks = []
    for row, user, item in zip(scores, test.user_ids, test.item_ids):
        row[np.isin(items, histories.get(user))] = -np.inf
        ranks.append(np.sum(row > row[items == item][0]) if item not in histories.get(user) else NUM_ITEMS)
    for k in (1, 5, 10, 50):
        assert result.recall[f"top_{k}"] == pytest.approx(np.mean(np.array(ranks) < k), abs=0.005), k
    assert 0 < result.recall["top_10"] < 1  # below top_10: a synthetic user often rates one item in train and test


def test_release_evaluation_can_sample_the_retrieval_pairs(trained, tmp_path):
    test, histories = trained["test"], trained["histories"]
    _export_release(trained, tmp_path)
    full = evaluate_release(tmp_path, test, histories)
    sampled = [evaluate_release(tmp_path, test, histories, max_pairs=40, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]  # seeded
    assert all(s.rmse == full.rmse for s in sampled)  # the ranker is measured on every pair
    assert all(round(v * 40) == v * 40 for v in sampled[0].top_k.values())  # shares of 40 pairs
    assert evaluate_release(tmp_path, test, histories, max_pairs=len(test)) == full


def test_factorized_top_k_counts_ties_in_and_is_independent_of_the_score_batch(monkeypatch):
    catalog = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    queries = np.ones((4, 1), dtype=np.float32)
    positives = np.array([[4.0], [2.0], [2.5], [0.0]], dtype=np.float32)  # 0, 2, 2 and 4 items score higher
    # The first positive ties with its own catalog row, which must not push it out of the top 1.
    expected = {"top_1": 0.25, "top_5": 1.0, "top_10": 1.0, "top_50": 1.0, "top_100": 1.0}
    assert factorized_top_k(queries, positives, catalog) == expected
    monkeypatch.setattr(evaluate, "SCORE_BLOCK", 4)  # one query row per score block
    assert factorized_top_k(queries, positives, catalog) == expected


def test_v1_query_towers_are_evaluated_from_the_user_id_alone(trained, tmp_path):
    tower = tf.keras.Sequential(
        [tf.keras.layers.StringLookup(vocabulary=trained["user_vocab"]), tf.keras.layers.Embedding(NUM_USERS + 1, 4)]
    )
    module = export._TowerServing(tower, tf.TensorSpec([None], tf.string, name="user_id"))
    tf.saved_model.save(module, str(tmp_path / "v1"), signatures={"serving_default": module.serve})
    serve = tf.saved_model.load(str(tmp_path / "v1")).signatures["serving_default"]
    users = np.array(["user1", "user2", "stranger"])
    out = embed_users(serve, users, trained["histories"], batch=2)
    np.testing.assert_allclose(out, tower(tf.constant(users)).numpy(), rtol=1e-6)


def test_recall_unseen_removes_the_users_training_items_before_the_cut(monkeypatch):
    catalog, catalog_ids = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32), np.array([10, 20, 30, 40])
    histories = Histories(np.array(["a", "a"]), np.array([40, 30]))
    users, items = np.array(["a", "a", "b", "a"]), np.array([20, 40, 20, 99])
    queries = np.ones((4, 1), dtype=np.float32)
    # a's 20 outranks a's only unseen rival 10; a's 40 was seen; stranger b's 20 has 30 and 40 above; 99 is unknown.
    expected = {"top_1": 0.25, "top_5": 0.5, "top_10": 0.5, "top_50": 0.5, "top_100": 0.5}
    assert recall_unseen(queries, catalog, catalog_ids, histories, users, items) == expected
    monkeypatch.setattr(evaluate, "SCORE_BLOCK", 4)  # one query row per score block
    assert recall_unseen(queries, catalog, catalog_ids, histories, users, items) == expected


# ---------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_publishes_a_verified_release_and_sets_stable_once(tmp_path, capsys):
    config = PipelineConfig(
        artifact_root=tmp_path / "store",
        retrieval=replace(RETRIEVAL_CONFIG, epochs=1),
        ranking=replace(RANKING_CONFIG, epochs=1),
    )
    first = run(config, dataset=synthetic_dataset())
    store = ArtifactStore(tmp_path / "store")
    path, manifest = store.verify(first.release_id)
    assert first.stable and store.get_channel("stable") == first.release_id
    assert set(manifest.metrics) == {
        "retrieval_top_k",
        "retrieval_recall",
        "ranking_rmse",
        "index_recall_at_100",
        "num_train",
        "num_test",
        "gate",
        "trained_on",
    }
    assert manifest.metrics["gate"] is None  # nothing to compare with yet
    # Evaluated on each user's latest 6 of 30, then refitted on all 1,800; seen items cover all of them.
    assert manifest.metrics["trained_on"] == {"interactions": 1800, "users": 60, "until_timestamp": 1799, "refit": True}
    data = synthetic_dataset()
    seen = read_seen(path)
    assert seen.contains(data.interactions.user_ids, data.interactions.item_ids).all()
    assert sum(len(seen.get(u)) for u in seen.users) == len(
        set(zip(data.interactions.user_ids, data.interactions.item_ids))
    )
    assert manifest.config["split"] == "recent" and manifest.config["refit"]
    assert set(manifest.metrics["retrieval_top_k"]) == {"top_1", "top_5", "top_10", "top_50", "top_100"}
    assert manifest.metrics["retrieval_recall"].keys() == manifest.metrics["retrieval_top_k"].keys()
    assert manifest.config["retrieval"]["epochs"] == manifest.config["ranking"]["epochs"] == 1
    assert (manifest.metrics["num_train"], manifest.metrics["num_test"]) == (1440, 360)
    assert manifest.data_fingerprint == synthetic_dataset().fingerprint()
    tower_meta = json.loads((path / QUERY_TOWER_DIR / SIDECAR).read_text())
    candidate_meta = json.loads((path / CANDIDATE_TOWER_DIR / SIDECAR).read_text())
    index_meta = json.loads((path / INDEX_DIR / "index.json").read_text())
    fingerprints = {m["candidate_tower_fingerprint"] for m in (tower_meta, candidate_meta, index_meta)}
    runs = {m["training_run"] for m in (tower_meta, candidate_meta, index_meta)}
    assert len(fingerprints) == 1 and runs == {manifest.training_runs["retrieval"]}
    assert json.loads((path / RANKER_DIR / SIDECAR).read_text())["training_run"] == manifest.training_runs["ranking"]
    for name in ("catalog.jsonl", "seen.npz", "popularity.npz"):
        assert name in manifest.files
    out = capsys.readouterr().out
    assert f"ranking RMSE: {first.metrics['ranking_rmse']:.4f}" in out

    second = run(replace(config, release_id="second"), dataset=synthetic_dataset())
    assert second.release_id == "second" and not second.stable
    # The stable release was given every held-out interaction: the gate has nothing fair to compare on.
    assert second.metrics["gate"] == {"stable_release_id": first.release_id, "passed": True, "compared_pairs": 0}
    assert store.get_channel("stable") == first.release_id
    assert store.list_releases() == sorted([first.release_id, "second"])
    assert not list((tmp_path / "store" / ".staging").iterdir())


def test_cli_requires_an_artifact_root_and_reads_the_environment(capsys):
    with pytest.raises(SystemExit):
        parse_args([], environ={})
    assert "FUNNEL_ARTIFACT_ROOT" in capsys.readouterr().err
    environ = {
        "FUNNEL_ARTIFACT_ROOT": "/x",
        "FUNNEL_CACHE_DIR": "/c",
        "FUNNEL_ADMIN_TARGET": "gw:1",
        "FUNNEL_ADMIN_TOKEN": "t",
    }
    config, every = parse_args(["--epochs", "1", "--no-set-stable", "--only", "ranker", "--every", "60"], environ)
    assert (config.artifact_root, config.cache_dir) == (Path("/x"), Path("/c"))
    assert config.retrieval.epochs == config.ranking.epochs == 1
    assert (config.admin_target, config.admin_token, config.only, every) == ("gw:1", "t", "ranker", 60.0)
    assert config.set_stable is False
    defaults, every = parse_args(["--artifact-root", "/y"], environ={})
    assert (defaults.set_stable, defaults.only, defaults.admin_target, every) == (None, None, None, None)
    assert (defaults.gate, defaults.rollout_fraction) == (GateConfig(max_recall_drop=0.01, max_rmse_increase=0.02), 0.1)
    assert (defaults.retrieval, defaults.ranking) == (RetrievalConfig(), RankingConfig())
    own = parse_args(["--artifact-root", "/y", "--epochs", "3", "--ranking-epochs", "5"], environ={})[0]
    assert (own.retrieval.epochs, own.ranking.epochs) == (3, 5)
    assert parse_args(["--artifact-root", "/y", "--no-gate"], environ={})[0].gate is None
    assert (defaults.split, defaults.refit, defaults.retrieval_weight) == ("recent", True, 1.0)
    assert defaults.retrieval.recency and defaults.ranking.recency_scale == 30.0
    plain = parse_args(["--artifact-root", "/y", "--split", "seeds", "--no-refit", "--no-recency"], environ={})[0]
    assert (plain.split, plain.refit, plain.retrieval_weight) == ("seeds", False, 0.0)
    assert not plain.retrieval.recency and plain.ranking.recency_scale == 0.0


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--rollout-fraction", "1.5"], "--rollout-fraction: expected a fraction between 0 and 1, got '1.5'"),
        (["--every", "0"], "expected --every > 0, got 0.0"),
        (["--only", "towers"], "invalid choice: 'towers'"),
        (["--split", "random"], "invalid choice: 'random'"),
        (["--max-rmse-increase", "-1"], "expected max_rmse_increase >= 0, got -1.0"),
        (["--epochs", "0"], "expected epochs >= 1, got 0"),
        (["--ranking-epochs", "0"], "expected epochs >= 1, got 0"),
    ],
)
def test_cli_rejects_bad_job_flags(flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--artifact-root", "/x", *flags], environ={})
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
