"""Ranker tests on planted taste groups: learning, served outputs, unknown ids, features, export contract."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

from funnel.tf import tf

import numpy as np
import pytest

from funnel.data.loaders import Dataset, Interactions, Items, Users
from funnel.release.store import SIDECAR
from trainer.ials import fit_ials, unseen_spread
from trainer.models import Histories
from trainer.ranking import RankingConfig, RankingModel, evaluate_rmse, export_ranker, predict, train_ranker
from trainer.split import seeds_split

NUM_USERS, NUM_ITEMS, GROUPS = 48, 64, 4
PER_GROUP = NUM_ITEMS // GROUPS
ITEM_IDS = 500 + 7 * np.arange(NUM_ITEMS, dtype=np.int64)  # not contiguous, so the lookup must map them
FRESH_USER = "fresh"  # in the users table (group 1's occupation) but without interactions
CONFIG = RankingConfig(embedding_dim=8, batch_size=64, epochs=40, learning_rate=0.01, seed=3, user_id_vectors=False)


def group_of_item(item_ids: np.ndarray) -> np.ndarray:
    return ((np.asarray(item_ids) - 500) // 7) // PER_GROUP


def synthetic_dataset() -> Dataset:
    """Users in 4 taste groups (occupation and gender follow the group, as do item genres): each watches 12 of
    their group's 16 items, rated 4-5, and 3 other items, rated 1-2."""
    rng = np.random.default_rng(11)
    users, items, ratings = [], [], []
    for u in range(NUM_USERS):
        group = u % GROUPS
        liked = group * PER_GROUP + rng.choice(PER_GROUP, 12, replace=False)
        other = rng.choice(np.flatnonzero(np.arange(NUM_ITEMS) // PER_GROUP != group), 3, replace=False)
        users += [f"user{u}"] * 15
        items += [*ITEM_IDS[liked], *ITEM_IDS[other]]
        ratings += [*rng.choice([4.0, 5.0], 12), *rng.choice([1.0, 2.0], 3)]
    interactions = Interactions(
        np.array(users, dtype=np.str_),
        np.array(items, dtype=np.int64),
        np.array(ratings, dtype=np.float32),
        np.arange(len(users), dtype=np.int64),
    )
    catalog = Items(
        ITEM_IDS,
        tuple(f"Item {i}" for i in ITEM_IDS),
        1990 + (np.arange(NUM_ITEMS, dtype=np.int32) % 10),
        tuple((f"Genre{g}",) for g in group_of_item(ITEM_IDS)),
    )
    people = [f"user{u}" for u in range(NUM_USERS)] + [FRESH_USER]
    groups = [u % GROUPS for u in range(NUM_USERS)] + [1]
    users_table = Users(
        np.array(people, dtype=np.str_),
        np.full(len(people), 30, dtype=np.int32),
        tuple("MF"[g % 2] for g in groups),
        tuple(f"job{g}" for g in groups),
        tuple("00000" for _ in people),
    )
    return Dataset("synthetic", interactions, catalog, users_table)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = synthetic_dataset()
    train_idx, test_idx = seeds_split(len(data.interactions))
    train, test = data.interactions.take(train_idx), data.interactions.take(test_idx)
    model = train_ranker(train, data, CONFIG, verbose=False)
    directory = tmp_path_factory.mktemp("ranker") / "ranker"
    export_ranker(model, directory, training_run="ranking-run-1")
    serve = tf.saved_model.load(str(directory)).signatures["serving_default"]
    return {"data": data, "train": train, "test": test, "model": model, "dir": directory, "serve": serve}


@functools.cache
def train_histories() -> Histories:
    """Each user's items in the training part of the fixture's split."""
    data = synthetic_dataset()
    train_idx, _ = seeds_split(len(data.interactions))
    train = data.interactions.take(train_idx)
    return Histories(train.user_ids, train.item_ids, train.timestamps)


def served(
    serve, user_ids: list[str] | np.ndarray, item_ids: list[int] | np.ndarray, histories: Histories | None = None
) -> dict[str, np.ndarray]:
    """The exported ranker's outputs for (user, item) pairs, each pair a row of one candidate, each user with their
    items in ``histories`` (default: the fixture's training part) as history."""
    histories = train_histories() if histories is None else histories
    user_ids = np.asarray(user_ids).astype(str)
    out = serve(
        user_id=tf.constant(user_ids, tf.string),
        history=tf.constant(histories.padded(user_ids)),
        item_id=tf.constant(np.asarray(item_ids, dtype=np.int64)[:, None]),
    )
    return {key: value.numpy()[:, 0] for key, value in out.items()}


def unseen_group_gap(train: Interactions, user: str, values: np.ndarray) -> float:
    """Mean value of the user's own group's unseen items minus that of the other groups' unseen items."""
    own = group_of_item(ITEM_IDS) == int(user.removeprefix("user")) % GROUPS
    unseen = ~np.isin(ITEM_IDS, train.item_ids[train.user_ids == user])
    return float(values[own & unseen].mean() - values[~own & unseen].mean())


def test_learns_the_planted_ratings(trained):
    rmse = evaluate_rmse(trained["model"], trained["test"])
    mean_rmse = float(np.sqrt(np.mean((trained["test"].ratings - trained["train"].ratings.mean()) ** 2)))
    # Ratings within a group's two values are noise, so even the planted truth scores about 0.5.
    assert rmse < 0.75 * mean_rmse, (rmse, mean_rmse)


def group_gaps(model: RankingModel, train: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the unseen-group gap of the rating output and of the engagement part of the score."""
    weight = model.config.score_rating_weight
    rating_gaps, engagement_gaps = [], []
    for u in range(NUM_USERS):
        out = predict(model, np.full(NUM_ITEMS, f"user{u}"), ITEM_IDS)
        rating_gaps.append(unseen_group_gap(train, f"user{u}", out["rating"]))
        engagement_gaps.append(unseen_group_gap(train, f"user{u}", out["score"] - weight * out["rating"]))
    return np.array(rating_gaps), np.array(engagement_gaps)


def test_rating_and_engagement_both_prefer_the_users_group(trained):
    """The rating output and the engagement part of the score each rank a user's unseen own-group items first."""
    rating_gaps, engagement_gaps = group_gaps(trained["model"], trained["train"])
    assert np.mean(rating_gaps > 1.0) > 0.9, rating_gaps
    assert np.mean(engagement_gaps > 0.0) > 0.9, engagement_gaps


def test_large_catalogs_learn_engagement_from_in_batch_negatives(trained):
    train = trained["train"]
    small = NUM_ITEMS - 1  # the catalog counts as large, as bench's 1M items do
    large = replace(CONFIG, full_softmax_max_items=small, ials_max_items=small, optimizer="adagrad", learning_rate=0.1)
    model = train_ranker(train, trained["data"], large, verbose=False)
    assert not model.full_softmax and trained["model"].full_softmax
    assert model.user_vector.per_batch and not trained["model"].user_vector.per_batch
    assert trained["model"].ials is not None and model.ials is None  # bench: 1M items, over ials_max_items
    rating_gaps, engagement_gaps = group_gaps(model, train)
    assert np.mean(engagement_gaps > 0.0) > 0.9, engagement_gaps


def test_score_is_engagement_logit_plus_weighted_rating_plus_scaled_ials(trained):
    model = trained["model"]
    tables = model.tables
    users = tf.constant(tables.user_rows(np.repeat(["user0", "user5"], NUM_ITEMS)))
    items = tf.constant(tables.item_rows(np.tile(ITEM_IDS, 2)))
    user, item = model.user_parts(users)[0], model.item_parts(items)[0]
    logit = tf.reduce_sum(user["engagement"] * item["vector"], axis=1) + item["engagement_bias"]
    ials = tf.reduce_sum(user["ials"] * item["ials"], axis=1).numpy()
    out = served(trained["serve"], np.repeat(["user0", "user5"], NUM_ITEMS), np.tile(ITEM_IDS, 2))
    expected = logit.numpy() + ials + model.config.score_rating_weight * out["rating"]
    np.testing.assert_allclose(out["score"], expected, atol=1e-4)
    assert np.std(out["score"] - out["rating"]) > 0.1  # the score is not the rating shifted
    # The iALS term's spread over a user's unseen items is about ials_weight.
    train = trained["train"]
    unseen = [~np.isin(ITEM_IDS, train.item_ids[train.user_ids == u]) for u in ("user0", "user5")]
    spreads = [np.std(ials[k * NUM_ITEMS : (k + 1) * NUM_ITEMS][unseen[k]]) for k in range(2)]
    assert 0.3 * CONFIG.ials_weight < np.mean(spreads) < 3 * CONFIG.ials_weight, spreads
    without = train_ranker(train, trained["data"], replace(CONFIG, epochs=1, ials_weight=0.0), verbose=False)
    assert without.ials is None and "ials" not in without.user_parts(users)[0]


def test_ials_ranks_a_users_unseen_own_group_items_first(trained):
    train = trained["train"]
    # (user row, item row) pairs: user k is "user{k}", item row k is ITEM_IDS[k].
    pairs = np.stack([[int(u.removeprefix("user")) for u in train.user_ids], (train.item_ids - 500) // 7], axis=1)
    users, items = fit_ials(pairs, NUM_USERS + 2, NUM_ITEMS + 1, dim=8, alpha=2.0, l2=1.0, iterations=10, seed=0)
    assert users.shape == (NUM_USERS + 2, 8) and items.shape == (NUM_ITEMS + 1, 8)
    assert not users[NUM_USERS:].any() and not items[NUM_ITEMS:].any()  # rows without pairs stay zero
    scores = users[:NUM_USERS] @ items[:NUM_ITEMS].T
    gaps = [unseen_group_gap(train, f"user{u}", scores[u]) for u in range(NUM_USERS)]
    assert np.mean(np.array(gaps) > 0) > 0.9, gaps
    again = fit_ials(pairs, NUM_USERS + 2, NUM_ITEMS + 1, dim=8, alpha=2.0, l2=1.0, iterations=10, seed=0)
    np.testing.assert_array_equal(users, again[0])


def test_ials_fit_solves_each_side_exactly():
    """One user, two items, one interaction: with the item factors fixed, the user's factor is the weighted ridge
    solution (1 + alpha) y / (|y|^2 (1 + alpha) + l2), and so on; checked on its fixed point in one dimension."""
    pairs = np.array([[0, 0]])
    users, items = fit_ials(pairs, 1, 2, dim=1, alpha=3.0, l2=0.5, iterations=50, seed=1)
    x, y = float(users[0, 0]), float(items[0, 0])
    assert abs(x) > 0.5  # not the trivial fixed point 0 (the nonzero one is x = y = sqrt(0.875))
    np.testing.assert_allclose(x, 4.0 * y / (4.0 * y * y + 0.5), rtol=1e-5)
    np.testing.assert_allclose(y, 4.0 * x / (4.0 * x * x + 0.5), rtol=1e-5)
    assert items[1, 0] == 0.0


@pytest.mark.parametrize("pairs, message", [(np.zeros((0, 2)), "got none"), (np.array([[0, 5]]), "within 2 users")])
def test_ials_fit_rejects_bad_pairs(pairs, message):
    with pytest.raises(ValueError, match=message):
        fit_ials(pairs, 2, 3, dim=2, alpha=1.0, l2=1.0, iterations=1, seed=0)


def test_unseen_spread_is_the_std_over_users_unseen_items_with_pairs():
    users = np.array([[1.0], [2.0], [0.0]], np.float32)
    items = np.array([[0.0], [1.0], [3.0], [5.0]], np.float32)  # item 0 has no pairs, so it is never counted
    pairs = np.array([[0, 1], [1, 2], [0, 3]])
    # user 0 saw items 1 and 3, leaving 2 (score 3); user 1 saw 2, leaving 1 and 3 (2 and 10); user 2 has no pairs.
    assert unseen_spread(users, items, pairs, seed=0) == pytest.approx(np.std([3.0, 2.0, 10.0]))
    everything = np.array([[0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [1, 3]])
    assert unseen_spread(users, items, everything, seed=0) == 0.0  # nobody has an unseen item left


def test_export_serves_the_contract_and_the_models_numbers(trained):
    serve = trained["serve"]
    (_, inputs) = serve.structured_input_signature
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in inputs.items()} == {
        "user_id": (tf.string, [None]),
        "history": (tf.int64, [None, None]),
        "item_id": (tf.int64, [None, None]),
    }
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in serve.structured_outputs.items()} == {
        "score": (tf.float32, [None, None]),
        "rating": (tf.float32, [None, None]),
    }
    test = trained["test"]
    out = served(serve, test.user_ids, test.item_ids)
    expected = predict(trained["model"], test.user_ids, test.item_ids)
    np.testing.assert_allclose(out["rating"], expected["rating"], atol=1e-4)
    np.testing.assert_allclose(out["score"], expected["score"], atol=1e-4)
    assert json.loads((trained["dir"] / SIDECAR).read_text(encoding="utf-8")) == {"training_run": "ranking-run-1"}


def test_unknown_users_and_items_get_finite_sane_outputs(trained):
    out = served(trained["serve"], ["nobody", "nobody", "user0", "nobody"], [int(ITEM_IDS[0]), 3, 3, 4])
    assert all(np.isfinite(v).all() for v in out.values())
    assert ((out["rating"] >= 1.0) & (out["rating"] <= 5.0)).all()
    # Nothing is known of an unknown user with an unknown item: the training mean rating, no engagement.
    mean = float(trained["train"].ratings.mean())
    np.testing.assert_allclose(out["rating"][[1, 3]], mean, atol=1e-5)
    np.testing.assert_allclose(out["score"][[1, 3]], trained["model"].config.score_rating_weight * mean, atol=1e-5)


def test_a_user_known_only_by_features_gets_their_groups_taste(trained):
    out = served(trained["serve"], np.full(NUM_ITEMS, FRESH_USER), ITEM_IDS)
    own = group_of_item(ITEM_IDS) == 1
    assert out["rating"][own].mean() > out["rating"][~own].mean() + 0.5
    nobody = served(trained["serve"], np.full(NUM_ITEMS, "nobody"), ITEM_IDS)
    assert not np.allclose(out["rating"], nobody["rating"])  # the features are baked in, keyed by user id


def test_an_unknown_user_with_a_history_is_ranked_like_the_user_it_belongs_to(trained):
    """The served ranker reads history: a stranger sending user u's training items gets u's taste (weaker than u's
    own, which the group-revealing features add to), while a stranger without history gets one generic order."""
    train, serve = trained["train"], trained["serve"]
    nobody = served(serve, np.full(NUM_ITEMS, "stranger"), ITEM_IDS)["score"]
    stranger_gaps, generic_gaps = [], []
    for u in range(NUM_USERS):
        items = train.item_ids[train.user_ids == f"user{u}"]
        stranger = Histories(np.full(len(items), "stranger"), items)
        as_stranger = served(serve, np.full(NUM_ITEMS, "stranger"), ITEM_IDS, stranger)["score"]
        stranger_gaps.append(unseen_group_gap(train, f"user{u}", as_stranger))
        generic_gaps.append(unseen_group_gap(train, f"user{u}", nobody))
    assert np.mean(np.array(stranger_gaps) > 0) > 0.8, stranger_gaps
    assert np.mean(stranger_gaps) > 0.3 and abs(np.mean(generic_gaps)) < 0.1, (stranger_gaps, generic_gaps)


def test_a_history_replaces_the_stored_one_and_weighs_its_latest_items_most(trained):
    serve, train = trained["serve"], trained["train"]
    own = train_histories().get("user0")  # oldest first
    stored = served(serve, ["user0"] * NUM_ITEMS, ITEM_IDS)["score"]
    sent = Histories(np.full(len(own), "user0"), own)  # the same items, in the same order, sent with the request
    np.testing.assert_allclose(served(serve, ["user0"] * NUM_ITEMS, ITEM_IDS, sent)["score"], stored, atol=1e-5)
    other = Histories(np.full(5, "user0"), train.item_ids[train.user_ids == "user1"][:5])
    assert not np.allclose(served(serve, ["user0"] * NUM_ITEMS, ITEM_IDS, other)["score"], stored)
    reversed_order = Histories(np.full(len(own), "user0"), own[::-1])
    assert not np.allclose(served(serve, ["user0"] * NUM_ITEMS, ITEM_IDS, reversed_order)["score"], stored)
    # Ids the release does not know are not embedded: alone, they are no history at all.
    nobody = served(serve, ["stranger"] * NUM_ITEMS, ITEM_IDS)["score"]
    unknown = Histories(np.full(2, "stranger"), np.array([3, 4]))
    np.testing.assert_allclose(served(serve, ["stranger"] * NUM_ITEMS, ITEM_IDS, unknown)["score"], nobody, atol=1e-5)


def test_export_refuses_an_existing_directory(trained, tmp_path):
    (tmp_path / "ranker").mkdir()
    with pytest.raises(FileExistsError):
        export_ranker(trained["model"], tmp_path / "ranker", training_run="r")


def test_training_is_deterministic_by_seed():
    data = synthetic_dataset()
    config = replace(CONFIG, epochs=2)
    first, second, reseeded = (
        train_ranker(data.interactions, data, c, verbose=False) for c in (config, config, replace(config, seed=4))
    )
    users, items = data.interactions.user_ids, data.interactions.item_ids
    a, b, c = (predict(model, users, items) for model in (first, second, reseeded))
    # Equal up to float32 summation order (the sparse history product is not bit-exact across runs), weights too.
    for key in ("rating", "score"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    for x, y in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    # The seed decides it: another seed starts and shuffles differently and ends elsewhere, far beyond that noise.
    assert np.max(np.abs(a["rating"] - c["rating"])) > 1e-2 and np.max(np.abs(a["score"] - c["score"])) > 1e-2
    # Two epochs moved every user off the training mean: the predictions are the model's, not a constant.
    assert np.std(a["rating"]) > 0.1 and np.corrcoef(a["rating"], data.interactions.ratings)[0, 1] > 0.3


@pytest.mark.parametrize(
    "field, value",
    [
        ("embedding_dim", 0),
        ("epochs", 0),
        ("l2", -1.0),
        ("learning_rate", 0.0),
        ("optimizer", "sgd"),
        ("ials_dim", 0),
        ("ials_weight", -0.5),
        ("ials_alpha", -1.0),
        ("ials_max_items", -1),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        RankingConfig(**{field: value})


def test_training_needs_interactions():
    data = synthetic_dataset()
    with pytest.raises(ValueError, match="training interactions"):
        train_ranker(data.interactions.take(np.zeros(0, dtype=np.int64)), data, CONFIG, verbose=False)
