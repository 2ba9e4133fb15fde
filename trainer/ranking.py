"""The Funnel ranker: SVD++ rating regression multi-tasked with a "which item do they watch" softmax, plus iALS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from funnel.tf import tf

import numpy as np
import tensorflow_recommenders as tfrs

from funnel.data.loaders import Dataset, Interactions
from funnel.release.files import HISTORY_PADDING, Histories, IdIndex
from trainer.baselines import rmse
from trainer.export import save_module
from trainer.ials import fit_ials, fold_in, gram, unseen_spread
from trainer.models import EpochLog, history_positions, seed_everything

AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)  # the MovieLens 1M age groups; age 0 is unknown
YEAR_BUCKETS = 12  # release years fall into at most this many quantile buckets; year 0 is unknown
RATING_RANGE = (1.0, 5.0)
PREDICT_BATCH = 65536
MAX_SEEN_MASK_CELLS = 1 << 28  # users x items of the full-softmax history mask (256 MiB of bool)
OPTIMIZERS = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad}


@dataclass(frozen=True)
class RankingConfig:
    """Hyper-parameters; the defaults were tuned on a validation split carved from the MovieLens 100K training data."""

    embedding_dim: int = 32
    l2: float = 0.05  # L2 on the interaction vectors of each batch row, relative to the squared rating error
    bias_l2: float = 0.05  # the same for the bias terms
    engagement_weight: float = 0.3  # loss = MSE(rating) + engagement_weight * cross-entropy(watched item)
    engagement_l2: float = 0.02  # L2 on the engagement vectors, relative to the cross-entropy
    score_rating_weight: float = 0.5  # served score = engagement logit + score_rating_weight * predicted rating
    # ... + ials_weight * the iALS score in units of its spread over users' unseen items (0: no iALS term)
    ials_weight: float = 0.75
    ials_dim: int = 128
    ials_alpha: float = 2.0  # an interaction's confidence is 1 + alpha, a missing one's 1
    ials_l2: float = 30.0
    ials_iterations: int = 10
    ials_max_items: int = 50_000  # larger catalogs get no iALS term (its exact solves cost O(items * dim^3))
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # or "adagrad", whose updates touch only the batch's rows (large catalogs)
    batch_size: int = 1024
    epochs: int = 22
    full_softmax_max_items: int = 50_000  # larger catalogs: in-batch engagement softmax with logQ correction
    history: bool = True  # SVD++ implicit term: the user's training items' "y" embeddings
    # > 0: each history item counts exp(-its place from the history's end / recency_scale) in the SVD++ term and as
    # iALS fold-in confidence (the latest item 1); 0: every item alike
    recency_scale: float = 30.0
    # The user id's own embedding in the rating and engagement vectors; without it a user is their features and
    # history alone, as a user unknown to the release but sending a history is served (the bias keeps its id term)
    user_id_vectors: bool = True
    user_features: bool = True  # age group, gender, occupation
    item_features: bool = True  # genres, release-year bucket
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "batch_size", "epochs", "full_softmax_max_items", "ials_dim", "ials_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        for name in (
            "l2",
            "bias_l2",
            "engagement_weight",
            "engagement_l2",
            "score_rating_weight",
            "ials_weight",
            "ials_alpha",
            "ials_l2",
            "ials_max_items",
            "recency_scale",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"expected {name} >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"expected optimizer in {sorted(OPTIMIZERS)}, got {self.optimizer!r}")


@dataclass(frozen=True)
class Tables:
    """Everything per user and per item the ranker reads, as arrays indexed by row; row 0 is the unknown id."""

    user_ids: np.ndarray  # str [U - 1], sorted: user_ids[k] is row k + 1
    item_ids: np.ndarray  # int64 [I - 1], sorted
    user_trained: np.ndarray  # float32 [U]: 1 where the user has training interactions (its id embedding is learned)
    item_trained: np.ndarray  # float32 [I]
    user_categories: np.ndarray  # int32 [U, 3]: age group, gender, occupation (0 unknown)
    user_category_sizes: tuple[int, int, int]
    item_genres: np.ndarray  # float32 [I, G]: multi-hot genres scaled to unit L2 norm
    item_year: np.ndarray  # int32 [I]: release-year bucket (0 unknown)
    num_year_buckets: int
    history: np.ndarray  # int64 [H, 2]: (user row, item row) of the training interactions, unique and sorted
    from_end: np.ndarray  # int64 [H]: each history entry's place from the end of its user's history in time (0: latest)
    global_mean: float

    @property
    def num_users(self) -> int:
        return len(self.user_ids) + 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) + 1

    @cached_property
    def _user_index(self) -> IdIndex:
        return IdIndex(self.user_ids)

    @cached_property
    def _item_index(self) -> IdIndex:
        return IdIndex(self.item_ids)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user id, 0 (the unknown row) for ids not in ``user_ids``."""
        return self._user_index.rows(user_ids) + 1

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id, 0 (the unknown row) for ids not in ``item_ids``."""
        return self._item_index.rows(item_ids) + 1

    def entries(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Position of each (user row, item row) pair in ``history``, -1 where absent."""
        keys = self.history[:, 0] * self.num_items + self.history[:, 1]  # distinct: ``history`` is unique
        return IdIndex(keys).rows(users * self.num_items + items)


def _vocab(values: list[str]) -> dict[str, int]:
    """Category → index from 1 (0 is unknown); blank values stay unknown."""
    return {v: k + 1 for k, v in enumerate(sorted({v for v in values if v}))}


def build_tables(train: Interactions, dataset: Dataset) -> Tables:
    """Rows for the training users, the users with features and the catalog; their features; the training history."""
    if not len(train):
        raise ValueError("expected training interactions, got none")
    feature_users = dataset.users.user_ids.astype(np.str_) if dataset.users is not None else np.array([], np.str_)
    user_ids = np.unique(np.concatenate([train.user_ids.astype(np.str_), feature_users]))
    item_ids = np.unique(np.concatenate([dataset.items.item_ids, train.item_ids]).astype(np.int64))
    user_index, item_index = IdIndex(user_ids), IdIndex(item_ids)
    # Row k + 1 is user_ids[k] (item_ids[k]), row 0 the unknown id; every training user and item has a row
    users, items = user_index.rows(train.user_ids) + 1, item_index.rows(train.item_ids) + 1
    user_trained = np.zeros(len(user_ids) + 1, np.float32)
    user_trained[users] = 1.0
    item_trained = np.zeros(len(item_ids) + 1, np.float32)
    item_trained[items] = 1.0

    categories = np.zeros((len(user_ids) + 1, 3), np.int32)
    sizes = (len(AGE_BOUNDARIES) + 2, 1, 1)
    if dataset.users is not None:
        people = dataset.users
        rows = user_index.rows(feature_users) + 1  # every user with features is in user_ids
        genders, occupations = _vocab(list(people.genders)), _vocab(list(people.occupations))
        ages = np.asarray(people.ages)
        categories[rows, 0] = np.where(ages > 0, np.digitize(ages, AGE_BOUNDARIES) + 1, 0)
        categories[rows, 1] = [genders.get(g, 0) for g in people.genders]
        categories[rows, 2] = [occupations.get(o, 0) for o in people.occupations]
        sizes = (len(AGE_BOUNDARIES) + 2, len(genders) + 1, len(occupations) + 1)

    catalog = dataset.items
    rows = item_index.rows(catalog.item_ids) + 1  # every catalog item is in item_ids
    genre_index = _vocab([g for genres in catalog.genres for g in genres])
    genres = np.zeros((len(item_ids) + 1, max(len(genre_index), 1)), np.float32)
    for row, names in zip(rows, catalog.genres, strict=True):
        genres[row, [genre_index[name] - 1 for name in names if name]] = 1.0
    genres /= np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1.0)
    years = np.asarray(catalog.years)
    known = years > 0
    inner = np.linspace(0, 1, YEAR_BUCKETS + 1)[1:-1]  # the quantiles between buckets
    edges = np.unique(np.quantile(years[known], inner)) if known.any() else np.zeros(0)
    year = np.zeros(len(item_ids) + 1, np.int32)
    year[rows] = np.where(known, np.digitize(years, edges) + 1, 0)

    history = np.unique(np.stack([users, items], axis=1), axis=0)
    timed = Histories(train.user_ids, train.item_ids, train.timestamps)
    entry_users, entry_items = user_ids[history[:, 0] - 1], item_ids[history[:, 1] - 1]
    timed_rows = timed.rows(entry_users)
    from_end = np.diff(timed.indptr)[timed_rows] - 1 - history_positions(timed, timed_rows, entry_items)
    return Tables(
        user_ids,
        item_ids,
        user_trained,
        item_trained,
        categories,
        sizes,
        genres,
        year,
        len(edges) + 2,
        history,
        from_end.astype(np.int64),
        float(np.mean(train.ratings)),
    )


def recency_weights(from_end: np.ndarray, scale: float) -> np.ndarray:
    """float32 weight of history entries by their place from the end (0: latest): exp(-place / scale), 1 for scale 0."""
    from_end = np.asarray(from_end, dtype=np.float64)
    return (np.ones_like(from_end) if scale == 0 else np.exp(-from_end / scale)).astype(np.float32)


def _l2(rows: list[tf.Tensor]) -> tf.Tensor:
    """Mean over the batch of each row's summed squares, summed over the given terms."""
    return tf.add_n([tf.reduce_mean(tf.reduce_sum(tf.square(r), axis=-1)) for r in rows])


class _Init(tf.keras.initializers.Initializer):
    """Normal(0, stddev) draws that differ between the weights sharing it (seeded by the global seed)."""

    def __init__(self, stddev: float) -> None:
        self.stddev = stddev

    def __call__(self, shape: tf.TensorShape, dtype: tf.DType | None = None, **kwargs: object) -> tf.Tensor:
        return tf.random.normal(shape, stddev=self.stddev, dtype=dtype or tf.float32)


class _Side(tf.keras.layers.Layer):
    """A user or item vector per row: id embedding + feature embeddings (+ SVD++ history term for users).

    Ids without training interactions and unknown categories contribute zero, so row 0 (an unknown id) maps to
    the zero vector and a user known only by features gets their features' vector.
    """

    def __init__(self, tables: Tables, user: bool, dim: int, config: RankingConfig, name: str) -> None:
        super().__init__(name=name)
        init = _Init(0.01 if dim > 1 else 0.0)
        self.trained = tf.constant(tables.user_trained if user else tables.item_trained)
        count = tables.num_users if user else tables.num_items
        self.ids = tf.keras.layers.Embedding(count, dim, embeddings_initializer=init, name="id")
        self.drop_ids = user and dim > 1 and not config.user_id_vectors
        self.categories: list[tuple[tf.Tensor, tf.keras.layers.Embedding]] = []
        if user and config.user_features:
            for column, size in enumerate(tables.user_category_sizes):
                embedding = tf.keras.layers.Embedding(size, dim, embeddings_initializer=init, name=f"category{column}")
                self.categories.append((tf.constant(tables.user_categories[:, column]), embedding))
        self.genres = None
        if not user and config.item_features:
            self.genres = tf.constant(tables.item_genres)
            self.genre_weights = tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=init, name="genres")
            year = tf.keras.layers.Embedding(tables.num_year_buckets, dim, embeddings_initializer=init, name="year")
            self.categories.append((tf.constant(tables.item_year), year))
        self.history = None
        if user and config.history and dim > 1:
            counts = np.bincount(tables.history[:, 0], minlength=tables.num_users)
            weights = recency_weights(tables.from_end, config.recency_scale)  # per history entry
            # Small catalogs: one sparse product over every user's history a step (fast, dense gradient of y).
            # Large ones: gather only the batch's histories, so a step costs the batch's history length and the
            # gradient of y stays sparse.
            self.per_batch = tables.num_items - 1 > config.full_softmax_max_items
            if self.per_batch:
                splits = np.concatenate([[0], np.cumsum(counts)])  # the history is sorted by user row
                self.history = tf.RaggedTensor.from_row_splits(tables.history[:, 1], splits)  # user -> item rows
                self.entry_weights = tf.RaggedTensor.from_row_splits(weights, splits)
            else:
                self.history = tf.sparse.SparseTensor(tables.history, weights, (tables.num_users, tables.num_items))
            self.history_items = tf.constant(tables.history[:, 1])  # history entry -> item row
            self.history_entry_weight = tf.constant(weights)
            total = np.bincount(tables.history[:, 0], weights=weights, minlength=tables.num_users)
            self.history_weight = tf.constant(1.0 / np.sqrt(np.maximum(total, 1.0)), tf.float32)  # per user row
            self.y = self.add_weight(name="history", shape=(tables.num_items, dim), initializer=init)

    def call(
        self, rows: tf.Tensor, entries: tf.Tensor | None = None, with_history: bool = True
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """(vector [B, dim], its terms for the L2 penalty); ``entries`` (positions in the history, -1 for none) leave
        each training row's own item out of its user's history term, as it will be at serving time. Without
        ``with_history`` the SVD++ history term is left out (the served ranker adds it from the request's history)."""
        own = self.ids(rows) * tf.gather(self.trained, rows)[:, None]
        if self.drop_ids:
            own = tf.zeros_like(own)
        terms = [own]
        for index, embedding in self.categories:
            category = tf.gather(index, rows)
            terms.append(embedding(category) * tf.cast(category > 0, own.dtype)[:, None])
        if self.genres is not None:
            terms.append(self.genre_weights(tf.gather(self.genres, rows)))
        if self.history is not None and with_history:
            if self.per_batch:
                weighted = (
                    tf.gather(self.y, tf.gather(self.history, rows)) * tf.gather(self.entry_weights, rows)[..., None]
                )
                implicit = tf.reduce_sum(weighted, axis=1)
            else:
                implicit = tf.gather(tf.sparse.sparse_dense_matmul(self.history, self.y), rows)
            if entries is not None:
                entry = tf.maximum(entries, 0)
                own_item = tf.gather(self.y, tf.gather(self.history_items, entry))
                own_item *= tf.gather(self.history_entry_weight, entry)[:, None]
                implicit -= tf.where((entries >= 0)[:, None], own_item, 0.0)
            terms.append(tf.gather(self.history_weight, rows)[:, None] * implicit)
        return tf.add_n(terms), terms


def _rating(user: dict[str, tf.Tensor], item: dict[str, tf.Tensor], global_mean: tf.Tensor) -> tf.Tensor:
    """mean + user bias + item bias + <user vector, item vector> per pairwise row (user and item parts of the same
    shape, or user parts that broadcast over a query's candidates)."""
    return global_mean + user["bias"] + item["bias"] + tf.reduce_sum(user["vector"] * item["vector"], axis=-1)


def _combine(
    user: dict[str, tf.Tensor], item: dict[str, tf.Tensor], global_mean: tf.Tensor, score_rating_weight: float
) -> dict[str, tf.Tensor]:
    """{"rating": clipped predicted rating, "score": engagement logit + weight * rating (+ the scaled iALS score,
    when the parts hold iALS factors)} per pairwise row (see _rating for the shapes)."""
    rating = tf.clip_by_value(_rating(user, item, global_mean), *RATING_RANGE)
    score = tf.reduce_sum(user["engagement"] * item["vector"], axis=-1) + item["engagement_bias"]
    if "ials" in user:
        score += tf.reduce_sum(user["ials"] * item["ials"], axis=-1)
    return {"rating": rating, "score": score + score_rating_weight * rating}


@dataclass(frozen=True)
class IalsTerm:
    """The iALS part of the served score: <scale · x_u, y_i>, with x_u the exact least-squares user factor given the
    user's history and the item factors (a fold-in, which the served ranker computes from the request's history)."""

    users: np.ndarray  # float32 [U, d]: the training users' factors, already times ``scale``
    items: np.ndarray  # float32 [I, d]
    gram: np.ndarray  # float32 [d, d]: YᵀY + l2·I
    alpha: float
    scale: float  # ials_weight / the score's spread over users' unseen items
    recency_scale: float = 30.0  # the fold-in's confidence of a history item is 1 + alpha * its recency weight


def ials_factors(tables: Tables, config: RankingConfig) -> IalsTerm | None:
    """The iALS term fitted to the training history, scaled so that it is ``ials_weight`` per unit of its spread
    over users' unseen items; None when the config has no iALS term, the catalog is larger than ``ials_max_items``
    or no user has an unseen item."""
    if config.ials_weight == 0 or tables.num_items - 1 > config.ials_max_items:
        return None
    users, items = fit_ials(
        tables.history,
        tables.num_users,
        tables.num_items,
        dim=config.ials_dim,
        alpha=config.ials_alpha,
        l2=config.ials_l2,
        iterations=config.ials_iterations,
        seed=config.seed,
    )
    weights = recency_weights(tables.from_end, config.recency_scale)  # as the served ranker folds users in
    users = fold_in(
        items, tables.history, tables.num_users, alpha=config.ials_alpha, l2=config.ials_l2, weights=weights
    )
    spread = unseen_spread(users, items, tables.history, config.seed)
    if spread == 0:
        return None
    scale = config.ials_weight / spread
    return IalsTerm(
        users * np.float32(scale),
        items,
        gram(items, config.ials_l2).astype(np.float32),
        config.ials_alpha,
        scale,
        config.recency_scale,
    )


class RankingModel(tfrs.Model):
    """Two tasks over one item tower, as in the TFRS multitask tutorial.

    Rating (MSE): mean + user bias + item bias + <user vector, item vector>, the user vector holding the SVD++
    history term. Engagement (softmax cross-entropy over the whole catalog, the user's other history items
    masked; in-batch with logQ correction for large catalogs): <user engagement vector, item vector> + item
    engagement bias, i.e. which item the user watched. The served score may add a fixed iALS term (``ials``: the
    user and item factors from `ials_factors`), fitted before and apart from the two tasks.
    """

    def __init__(self, tables: Tables, config: RankingConfig, ials: IalsTerm | None = None) -> None:
        super().__init__()
        self.tables, self.config, self.ials_term = tables, config, ials
        self.ials = None if ials is None else (tf.constant(ials.users), tf.constant(ials.items))
        dim = config.embedding_dim
        self.user_bias = _Side(tables, True, 1, config, "user_bias")
        self.item_bias = _Side(tables, False, 1, config, "item_bias")
        self.user_vector = _Side(tables, True, dim, config, "user_vector")
        self.item_vector = _Side(tables, False, dim, config, "item_vector")  # shared by both tasks
        self.user_engagement = _Side(tables, True, dim, config, "user_engagement")
        self.item_engagement_bias = _Side(tables, False, 1, config, "item_engagement_bias")
        self.global_mean = tf.constant(tables.global_mean, tf.float32)
        self.full_softmax = (
            tables.num_items - 1 <= config.full_softmax_max_items
            and tables.num_users * tables.num_items <= MAX_SEEN_MASK_CELLS
        )
        if self.full_softmax:
            self.catalog = tf.range(tables.num_items, dtype=tf.int64)
            seen = np.zeros((tables.num_users, tables.num_items), bool)  # [U, I]: the catalog softmax's history mask
            seen[tables.history[:, 0], tables.history[:, 1]] = True
            seen[:, 0] = True  # the unknown item is never a candidate
            self.seen = tf.constant(seen)
        else:  # in-batch negatives, each corrected by its item's share of the training interactions (logQ)
            counts = np.maximum(np.bincount(tables.history[:, 1], minlength=tables.num_items), 1).astype(np.float64)
            self.sampling_probability = tf.constant(counts / counts.sum(), tf.float32)
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(), metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")]
        )
        self.engagement_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True), remove_accidental_hits=True
        )

    def user_parts(self, rows: tf.Tensor, entries: tf.Tensor | None = None) -> tuple[dict, dict]:
        """Per-user terms {"bias" [B], "vector" [B, D], "engagement" [B, D], with iALS "ials" [B, d]} and their L2
        penalty terms."""
        bias, bias_terms = self.user_bias(rows)
        vector, vector_terms = self.user_vector(rows, entries)
        engagement, engagement_terms = self.user_engagement(rows, entries)
        parts = {"bias": bias[:, 0], "vector": vector, "engagement": engagement}
        if self.ials is not None:
            parts["ials"] = tf.gather(self.ials[0], rows)
        return parts, {"bias": bias_terms, "vector": vector_terms, "engagement": engagement_terms}

    def item_parts(self, rows: tf.Tensor) -> tuple[dict, dict]:
        """Per-item terms {"bias" [B], "vector" [B, D], "engagement_bias" [B], with iALS "ials" [B, d]} and their L2
        penalty terms."""
        bias, bias_terms = self.item_bias(rows)
        vector, vector_terms = self.item_vector(rows)
        parts = {"bias": bias[:, 0], "vector": vector, "engagement_bias": self.item_engagement_bias(rows)[0][:, 0]}
        if self.ials is not None:
            parts["ials"] = tf.gather(self.ials[1], rows)
        return parts, {"bias": bias_terms, "vector": vector_terms}

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """{"rating", "score"} for rows of {"user": user row, "item": item row} (see Tables)."""
        user, item = self.user_parts(features["user"])[0], self.item_parts(features["item"])[0]
        return _combine(user, item, self.global_mean, self.config.score_rating_weight)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        config = self.config
        user, user_terms = self.user_parts(features["user"], features["entry"])
        item, item_terms = self.item_parts(features["item"])
        rating = _rating(user, item, self.global_mean)  # unclipped while training
        loss = self.rating_task(labels=features["rating"], predictions=rating)
        loss += config.bias_l2 * _l2(user_terms["bias"] + item_terms["bias"])
        loss += config.l2 * _l2(user_terms["vector"] + item_terms["vector"])
        if not training or config.engagement_weight == 0:
            return loss
        # Logits <query, candidate> + item engagement bias, via a constant query coordinate.
        query = tf.concat([user["engagement"], tf.ones_like(user["engagement"][:, :1])], axis=1)
        positives = tf.concat([item["vector"], item["engagement_bias"][:, None]], axis=1)
        if self.full_softmax:
            # Candidates: each row's own item, then the whole catalog without the user's history (the row's own
            # item there is an accidental hit).
            catalog = self.item_parts(self.catalog)[0]
            candidates = tf.concat([catalog["vector"], catalog["engagement_bias"][:, None]], axis=1)
            mask = tf.concat([tf.eye(tf.shape(query)[0], dtype=tf.bool), ~tf.gather(self.seen, features["user"])], 1)
            engagement = self.engagement_task(
                query,
                tf.concat([positives, candidates], axis=0),
                candidate_ids=tf.concat([features["item"], self.catalog], axis=0),
                score_mask=mask,
                compute_metrics=False,
                compute_batch_metrics=False,
            )
        else:
            engagement = self.engagement_task(
                query,
                positives,
                candidate_ids=features["item"],
                candidate_sampling_probability=tf.gather(self.sampling_probability, features["item"]),
                compute_metrics=False,
                compute_batch_metrics=False,
            )
        penalty = _l2(user_terms["engagement"] + item_terms["vector"])
        return loss + config.engagement_weight * (engagement + config.engagement_l2 * penalty)


def _batches(tables: Tables, data: Interactions, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """Row-indexed batches; shuffled every epoch when ``seed`` is given."""
    users, items = tables.user_rows(data.user_ids), tables.item_rows(data.item_ids)
    columns = {
        "user": users,
        "item": items,
        "rating": data.ratings.astype(np.float32),
        "entry": tables.entries(users, items),
    }
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if seed is not None:
        dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


def train_ranker(
    train: Interactions,
    dataset: Dataset,
    config: RankingConfig = RankingConfig(),
    *,
    validation: Interactions | None = None,
    verbose: bool = True,
) -> RankingModel:
    """Fit the ranker on ``train`` (features from ``dataset``) for ``config.epochs`` epochs.

    With ``validation``, its (unclipped) RMSE is computed after every epoch, for logging and tuning only.
    """
    seed_everything(config.seed)
    tables = build_tables(train, dataset)
    model = RankingModel(tables, config, ials_factors(tables, config))
    model.compile(optimizer=OPTIMIZERS[config.optimizer](learning_rate=config.learning_rate))
    model.fit(
        _batches(tables, train, config.batch_size, config.seed),
        epochs=config.epochs,
        validation_data=None if validation is None else _batches(tables, validation, PREDICT_BATCH),
        callbacks=[EpochLog()] if verbose else [],
        verbose=0,
    )
    return model


def predict(model: RankingModel, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{"rating": float32 [N], "score": float32 [N]} for pairwise rows, as the exported ranker serves them."""
    if len(user_ids) != len(item_ids):
        raise ValueError(f"expected as many user ids as item ids, got {len(user_ids)} and {len(item_ids)}")
    users, items = model.tables.user_rows(user_ids), model.tables.item_rows(item_ids)
    out: dict[str, list[np.ndarray]] = {"rating": [], "score": []}
    for s in range(0, len(users), PREDICT_BATCH):
        rows = {"user": tf.constant(users[s : s + PREDICT_BATCH]), "item": tf.constant(items[s : s + PREDICT_BATCH])}
        for key, value in model(rows).items():
            out[key].append(value.numpy())
    return {key: np.concatenate(parts or [np.zeros(0)]).astype(np.float32) for key, parts in out.items()}


def evaluate_rmse(model: RankingModel, test: Interactions) -> float:
    """Root mean squared error of the served (clipped) predicted ratings on ``test``."""
    if not len(test):
        raise ValueError("expected test interactions, got none")
    return rmse(predict(model, test.user_ids, test.item_ids)["rating"], test.ratings)


class _RankerServing(tf.Module):
    """serving_default(user_id [B], history [B, L], item_id [B, C]) -> {"score", "rating"} [B, C]: per-user and
    per-item tables computed once from the trained model, the user side without its history terms, which are
    computed from ``history`` (the SVD++ term and the iALS fold-in). Unknown ids use row 0; unknown history ids and
    padding are ignored, so a user unknown to the release is ranked by their history alone."""

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        tables, config = model.tables, model.config
        all_users = tf.range(tables.num_users, dtype=tf.int64)
        users = {
            "bias": model.user_bias(all_users)[0][:, 0],
            "vector": model.user_vector(all_users, with_history=False)[0],
            "engagement": model.user_engagement(all_users, with_history=False)[0],
        }
        items = model.item_parts(tf.range(tables.num_items, dtype=tf.int64))[0]
        self.users = {key: tf.Variable(value, trainable=False, name=f"user_{key}") for key, value in users.items()}
        self.items = {key: tf.Variable(value, trainable=False, name=f"item_{key}") for key, value in items.items()}
        self.history_terms = {}  # user part -> the "y" table its SVD++ history term sums
        if model.user_vector.history is not None:
            self.history_terms = {
                key: tf.Variable(side.y, trainable=False, name=f"history_{key}")
                for key, side in (("vector", model.user_vector), ("engagement", model.user_engagement))
            }
        self.recency_scale = config.recency_scale
        ials = model.ials_term
        self.ials_gram = None if ials is None else tf.Variable(ials.gram, trainable=False, name="ials_gram")
        self.ials_alpha, self.ials_scale = (0.0, 0.0) if ials is None else (ials.alpha, ials.scale)
        self.user_index = _index(tf.constant(tables.user_ids, tf.string))
        self.item_index = _index(tf.constant(tables.item_ids, tf.int64))
        self.global_mean = tf.Variable(tables.global_mean, trainable=False, dtype=tf.float32, name="global_mean")
        self.score_rating_weight = config.score_rating_weight

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None, None], tf.int64, name="history"),
            tf.TensorSpec([None, None], tf.int64, name="item_id"),
        ]
    )
    def serve(self, user_id: tf.Tensor, history: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        users = self.user_index.lookup(user_id)
        user = {key: tf.gather(table, users)[:, None] for key, table in self.users.items()}  # [B, 1, ...]
        rows = self.item_index.lookup(history)  # [B, L]; 0: padding or unknown
        present = tf.cast(history != HISTORY_PADDING, tf.float32)  # unknown ids keep their place in time
        from_end = tf.reduce_sum(present, axis=1, keepdims=True) - 1.0 - tf.cumsum(present, axis=1, exclusive=True)
        recency = tf.exp(-from_end / self.recency_scale) if self.recency_scale > 0 else tf.ones_like(from_end)
        weights = (recency * tf.cast(rows > 0, tf.float32))[:, :, None]  # each history item's; 0 for unknown ones
        norm = tf.math.rsqrt(tf.maximum(tf.reduce_sum(weights, axis=1), 1.0))  # [B, 1]: 1 / sqrt(total weight)
        for key, table in self.history_terms.items():
            implicit = norm * tf.reduce_sum(tf.gather(table, rows) * weights, axis=1)
            user[key] = user[key] + implicit[:, None]
        if self.ials_gram is not None:
            observed = tf.gather(self.items["ials"], rows) * tf.cast(rows > 0, tf.float32)[:, :, None]  # [B, L, d]
            confidence = self.ials_alpha * weights  # above the unobserved cells' 1
            normal = self.ials_gram + tf.einsum("bld,ble->bde", observed * confidence, observed)
            target = tf.reduce_sum(observed * (1.0 + confidence), axis=1)[:, :, None]
            user["ials"] = self.ials_scale * tf.transpose(tf.linalg.solve(normal, target), [0, 2, 1])  # [B, 1, d]
        candidates = self.item_index.lookup(item_id)
        item = {key: tf.gather(table, candidates) for key, table in self.items.items()}  # [B, C, ...]
        return _combine(user, item, self.global_mean, self.score_rating_weight)


def _index(keys: tf.Tensor) -> tf.lookup.StaticHashTable:
    """id → row (position + 1), 0 for unknown ids."""
    rows = tf.range(1, tf.shape(keys, tf.int64)[0] + 1, dtype=tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, rows), default_value=0)


def export_ranker(model: RankingModel, directory: Path, *, training_run: str) -> None:
    """SavedModel: serving_default(user_id: string [B], history: int64 [B, L], item_id: int64 [B, C])
    -> {"score": float32 [B, C], "rating": float32 [B, C]} (history and candidates right-padded with -1), plus the
    funnel.json sidecar {"training_run": ...}."""
    save_module(_RankerServing(model), Path(directory), {"training_run": training_run})
