"""The Funnel ranker: a feature-aware SVD++ rating model trained jointly with a "will they watch it" softmax task."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.data import Dataset, Interactions
from funnel.tf import tf
from trainer.export import _save

import tensorflow_recommenders as tfrs  # noqa: E402  (after funnel.tf, which selects Keras 2)

AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)  # the MovieLens 1M age groups; age 0 is unknown
YEAR_BUCKETS = 12  # release years fall into at most this many quantile buckets; year 0 is unknown
RATING_RANGE = (1.0, 5.0)


@dataclass(frozen=True)
class RankingConfig:
    """Hyper-parameters; the defaults were tuned on a validation split carved from the MovieLens 100K training data."""

    embedding_dim: int = 32
    l2: float = 0.05  # L2 on the embedding rows of each batch, relative to the mean squared error
    bias_l2: float = 0.05  # the same for the bias terms
    learning_rate: float = 3e-3
    batch_size: int = 1024
    epochs: int = 30
    engagement_weight: float = 0.05  # loss = MSE(rating) + engagement_weight * softmax cross-entropy(watched item)
    engagement_l2: float = 1e-4
    engagement_dim: int = 32
    engagement_user_ids: bool = True
    engagement_bias: bool = True
    shared_items: bool = False
    shared_users: bool = False
    history_dropout: float = 0.0  # share of history items dropped from the engagement query while training
    rating_history_dropout: float = 0.0
    score_rating_weight: float = 1.0  # score = engagement logit + score_rating_weight * predicted rating
    history: bool = True  # SVD++ implicit term: the user's training items' "y" embeddings
    user_features: bool = True  # age group, gender, occupation
    item_features: bool = True  # genres, release-year bucket
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "engagement_dim", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        for name in ("l2", "bias_l2", "engagement_weight", "engagement_l2", "score_rating_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"expected {name} >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class Tables:
    """Everything per user and per item the ranker reads, as arrays indexed by row; row 0 is the unknown id."""

    user_ids: np.ndarray  # str [U]: user_ids[k] is row k + 1
    item_ids: np.ndarray  # int64 [I]: item_ids[k] is row k + 1
    user_trained: np.ndarray  # float32 [U + 1]: 1 where the user has training ratings (its id embedding is learned)
    item_trained: np.ndarray  # float32 [I + 1]
    user_categories: np.ndarray  # int32 [U + 1, 3]: age group, gender, occupation (0 unknown)
    user_category_sizes: tuple[int, ...]
    item_genres: np.ndarray  # float32 [I + 1, G]: multi-hot genres scaled to unit L2 norm
    item_year: np.ndarray  # int32 [I + 1]: release-year bucket (0 unknown)
    num_year_buckets: int
    history: np.ndarray  # int64 [H, 2] (user row, item row) of every training interaction, deduplicated, sorted
    global_mean: float

    @property
    def num_users(self) -> int:
        return len(self.user_ids) + 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) + 1

    def entries(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Index of each (user row, item row) pair in ``history``, -1 where absent."""
        keys = self.history[:, 0] * self.num_items + self.history[:, 1]
        wanted = users * self.num_items + items
        pos = np.searchsorted(keys, wanted).clip(0, max(len(keys) - 1, 0))
        return np.where(keys[pos] == wanted, pos, -1).astype(np.int64)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return _rows(self.user_ids, np.asarray(user_ids).astype(self.user_ids.dtype))

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        return _rows(self.item_ids, np.asarray(item_ids, dtype=np.int64))


def _rows(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in a sorted vocabulary (k + 1), 0 for ids not in it."""
    pos = np.searchsorted(vocab, ids).clip(0, max(len(vocab) - 1, 0))
    found = (vocab[pos] == ids) if len(vocab) else np.zeros(len(ids), dtype=bool)
    return np.where(found, pos + 1, 0).astype(np.int64)


def _vocab(values: list[str]) -> dict[str, int]:
    """Category → index from 1 (0 is unknown), blank values excluded."""
    return {v: k + 1 for k, v in enumerate(sorted({v for v in values if v}))}


def build_tables(train: Interactions, dataset: Dataset) -> Tables:
    """Index the users (training users and those with features) and the catalog; features and history per row."""
    if not len(train):
        raise ValueError("expected training interactions, got none")
    feature_users = dataset.users.user_ids if dataset.users is not None else np.array([], dtype=np.str_)
    user_ids = np.unique(np.concatenate([train.user_ids.astype(np.str_), feature_users.astype(np.str_)]))
    item_ids = np.unique(np.concatenate([dataset.items.item_ids, train.item_ids]).astype(np.int64))
    tables_without_features = Tables(
        user_ids, item_ids, np.zeros(0), np.zeros(0), np.zeros(0), (), np.zeros(0), np.zeros(0), 0, np.zeros(0), 0.0
    )
    u, i = tables_without_features.user_rows(train.user_ids), tables_without_features.item_rows(train.item_ids)
    user_trained = np.zeros(len(user_ids) + 1, np.float32)
    user_trained[u] = 1.0
    item_trained = np.zeros(len(item_ids) + 1, np.float32)
    item_trained[i] = 1.0

    categories = np.zeros((len(user_ids) + 1, 3), np.int32)
    sizes = (len(AGE_BOUNDARIES) + 2, 1, 1)
    if dataset.users is not None:
        users = dataset.users
        rows = tables_without_features.user_rows(users.user_ids)
        genders, occupations = _vocab(list(users.genders)), _vocab(list(users.occupations))
        ages = np.asarray(users.ages)
        categories[rows, 0] = np.where(ages > 0, np.digitize(ages, AGE_BOUNDARIES) + 1, 0)
        categories[rows, 1] = [genders.get(g, 0) for g in users.genders]
        categories[rows, 2] = [occupations.get(o, 0) for o in users.occupations]
        sizes = (len(AGE_BOUNDARIES) + 2, len(genders) + 1, len(occupations) + 1)

    items = dataset.items
    rows = tables_without_features.item_rows(items.item_ids)
    genre_vocab = _vocab([g for genres in items.genres for g in genres])
    genres = np.zeros((len(item_ids) + 1, max(len(genre_vocab), 1)), np.float32)
    for row, names in zip(rows, items.genres, strict=True):
        for name in names:
            genres[row, genre_vocab[name] - 1] = 1.0
    genres /= np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1.0)
    years = np.asarray(items.years)
    known = years > 0
    edges = np.unique(np.quantile(years[known], np.linspace(0, 1, YEAR_BUCKETS + 1)[1:-1])) if known.any() else []
    year = np.zeros(len(item_ids) + 1, np.int32)
    year[rows] = np.where(known, np.digitize(years, edges) + 1, 0)

    history = np.unique(np.stack([u, i], axis=1), axis=0)
    return Tables(
        user_ids, item_ids, user_trained, item_trained, categories, sizes, genres, year, len(edges) + 2, history,
        float(np.mean(train.ratings)),
    )  # fmt: skip


def _l2(*rows: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of the summed squares of each row."""
    return tf.add_n([tf.reduce_mean(tf.reduce_sum(tf.square(r), axis=-1)) for r in rows])


class _Side(tf.keras.layers.Layer):
    """One side's vector per row: masked id embedding + feature embeddings (+ SVD++ history term for users)."""

    def __init__(
        self, tables: Tables, user: bool, dim: int, config: RankingConfig, name: str, history_dropout: float = 0.0
    ) -> None:
        super().__init__(name=name)
        count = tables.num_users if user else tables.num_items
        init = tf.keras.initializers.RandomNormal(stddev=0.01 if dim > 1 else 0.0)
        self.trained = tf.constant(tables.user_trained if user else tables.item_trained)
        if user and name == "user_engagement" and not config.engagement_user_ids:
            self.trained = tf.zeros_like(self.trained)
        self.ids = tf.keras.layers.Embedding(count, dim, embeddings_initializer=init, name="id")
        self.categories: list[tuple[tf.Tensor, tf.keras.layers.Embedding]] = []
        self.genres = self.history = None
        if user and config.user_features:
            for column, size in enumerate(tables.user_category_sizes):
                embedding = tf.keras.layers.Embedding(size, dim, embeddings_initializer=init, name=f"category{column}")
                self.categories.append((tf.constant(tables.user_categories[:, column]), embedding))
        if not user and config.item_features:
            self.genres = tf.constant(tables.item_genres)
            self.genre_weights = tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=init, name="genres")
            year = tf.keras.layers.Embedding(tables.num_year_buckets, dim, embeddings_initializer=init, name="year")
            self.categories.append((tf.constant(tables.item_year), year))
        if user and config.history and dim > 1:
            counts = np.bincount(tables.history[:, 0], minlength=tables.num_users).astype(np.float32)
            self.history = tf.constant(tables.history)
            self.weights_ = tf.constant(1.0 / np.sqrt(np.maximum(counts, 1.0))[tables.history[:, 0]])
            self.history_dropout = history_dropout
            self.y = self.add_weight(name="history", shape=(tables.num_items, dim), initializer=init)
            self.num_users = tables.num_users

    def call(
        self, rows: tf.Tensor, entries: tf.Tensor | None = None, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(vector [B, dim], L2 penalty); ``entries`` (index into the history, -1 for none) leaves each row's own
        interaction out of its user's history term."""
        own = self.ids(rows) * tf.gather(self.trained, rows)[:, None]
        parts, penalty = [own], [own]
        for index, embedding in self.categories:
            category = tf.gather(index, rows)
            vector = embedding(category) * tf.cast(category > 0, own.dtype)[:, None]
            parts.append(vector)
            penalty.append(vector)
        if self.genres is not None:
            parts.append(self.genre_weights(tf.gather(self.genres, rows)))
            penalty.append(parts[-1])
        if self.history is not None:
            weights = self.weights_
            if training and self.history_dropout > 0:
                keep = 1.0 - self.history_dropout
                weights *= tf.cast(tf.random.uniform(tf.shape(weights)) < keep, weights.dtype) / keep
            matrix = tf.sparse.SparseTensor(self.history, weights, (self.num_users, tf.shape(self.y, tf.int64)[0]))
            implicit = tf.gather(tf.sparse.sparse_dense_matmul(matrix, self.y), rows)
            if entries is not None:
                found = entries >= 0
                left_out = tf.where(found, tf.gather(weights, tf.maximum(entries, 0)), 0.0)
                implicit -= left_out[:, None] * tf.gather(self.y, tf.gather(self.history[:, 1], tf.maximum(entries, 0)))
            parts.append(implicit)
            penalty.append(implicit)
        return tf.add_n(parts), _l2(*penalty)


def _combine(user: dict[str, tf.Tensor], item: dict[str, tf.Tensor], global_mean: tf.Tensor, score_rating_weight: float
             ) -> dict[str, tf.Tensor]:
    """Rating (clipped) and served score of pairwise rows from their user and item parts."""
    rating = global_mean + user["bias"] + item["bias"] + tf.reduce_sum(user["vector"] * item["vector"], axis=1)
    rating = tf.clip_by_value(rating, *RATING_RANGE)
    engagement = tf.reduce_sum(user["engagement"] * item["engagement"], axis=1) + item["engagement_bias"]
    return {"rating": rating, "score": engagement + score_rating_weight * rating}


class RankingModel(tfrs.Model):
    """Rating = mean + user bias + item bias + <user, item> (SVD++ with features), MSE; engagement = softmax over
    the catalog of a second user · item dot product, predicting which item a user watched (history items masked)."""

    def __init__(self, tables: Tables, config: RankingConfig) -> None:
        super().__init__()
        self.tables, self.config = tables, config
        dim, edim = config.embedding_dim, config.engagement_dim
        self.user_bias = _Side(tables, True, 1, config, "user_bias")
        self.item_bias = _Side(tables, False, 1, config, "item_bias")
        self.user_vector = _Side(tables, True, dim, config, "user_vector", config.rating_history_dropout)
        self.item_vector = _Side(tables, False, dim, config, "item_vector")
        self.user_engagement = (
            self.user_vector if config.shared_users
            else _Side(tables, True, edim, config, "user_engagement", config.history_dropout)
        )  # fmt: skip
        self.item_engagement = (
            self.item_vector if config.shared_items else _Side(tables, False, edim, config, "item_engagement")
        )
        self.item_engagement_bias = _Side(tables, False, 1, config, "item_engagement_bias")
        self.global_mean = tf.constant(tables.global_mean, tf.float32)
        seen = np.zeros((tables.num_users, tables.num_items), bool)
        seen[tables.history[:, 0], tables.history[:, 1]] = True
        seen[:, 0] = True  # the unknown item is never a candidate
        self.seen = tf.constant(seen)
        self.rating_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(), metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")]
        )
        self.engagement_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True), remove_accidental_hits=True
        )

    def user_parts(
        self, rows: tf.Tensor, entries: tf.Tensor | None = None, training: bool = False
    ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Per-user terms {"bias" [B], "vector" [B, D], "engagement" [B, E]} and their L2 penalties."""
        bias, bias_penalty = self.user_bias(rows)
        vector, vector_penalty = self.user_vector(rows, entries, training)
        engagement, engagement_penalty = self.user_engagement(rows, entries, training)
        parts = {"bias": bias[:, 0], "vector": vector, "engagement": engagement}
        return parts, {"bias": bias_penalty, "vector": vector_penalty, "engagement": engagement_penalty}

    def item_parts(self, rows: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Per-item terms {"bias", "vector", "engagement", "engagement_bias"} and their L2 penalties."""
        bias, bias_penalty = self.item_bias(rows)
        vector, vector_penalty = self.item_vector(rows)
        engagement, engagement_penalty = self.item_engagement(rows)
        engagement_bias = self.item_engagement_bias(rows)[0][:, 0] if self.config.engagement_bias else 0.0 * bias[:, 0]
        parts = {"bias": bias[:, 0], "vector": vector, "engagement": engagement, "engagement_bias": engagement_bias}
        return parts, {"bias": bias_penalty, "vector": vector_penalty, "engagement": engagement_penalty}

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        user, _ = self.user_parts(features["user"])
        item, _ = self.item_parts(features["item"])
        return _combine(user, item, self.global_mean, self.config.score_rating_weight)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        config = self.config
        user, user_penalty = self.user_parts(features["user"], features["entry"], training)
        item, item_penalty = self.item_parts(features["item"])
        rating = self.global_mean + user["bias"] + item["bias"] + tf.reduce_sum(user["vector"] * item["vector"], 1)
        loss = self.rating_task(labels=features["rating"], predictions=rating)
        loss += config.bias_l2 * (user_penalty["bias"] + item_penalty["bias"])
        loss += config.l2 * (user_penalty["vector"] + item_penalty["vector"])
        if training and config.engagement_weight > 0:
            catalog, _ = self.item_parts(tf.range(self.tables.num_items, dtype=tf.int64))
            # A constant query coordinate meets each item's engagement bias.
            query = tf.concat([user["engagement"], tf.ones_like(user["engagement"][:, :1])], axis=1)
            positives = tf.concat([item["engagement"], item["engagement_bias"][:, None]], axis=1)
            candidates = tf.concat([catalog["engagement"], catalog["engagement_bias"][:, None]], axis=1)
            # Candidates: each row's positive, then the whole catalog minus the user's other history items.
            batch = tf.shape(query)[0]
            mask = tf.concat([tf.eye(batch, dtype=tf.bool), ~tf.gather(self.seen, features["user"])], axis=1)
            ids = tf.concat([features["item"], tf.range(self.tables.num_items, dtype=tf.int64)], axis=0)
            engagement = self.engagement_task(
                query, tf.concat([positives, candidates], axis=0), candidate_ids=ids, score_mask=mask,
                compute_metrics=False, compute_batch_metrics=False,
            )  # fmt: skip
            penalty = user_penalty["engagement"] + item_penalty["engagement"]
            loss += config.engagement_weight * (engagement + config.engagement_l2 * penalty)
        return loss


def _batches(tables: Tables, data: Interactions, batch_size: int, seed: int | None) -> tf.data.Dataset:
    users, items = tables.user_rows(data.user_ids), tables.item_rows(data.item_ids)
    columns = {"user": users, "item": items, "rating": data.ratings.astype(np.float32), "entry": tables.entries(users, items)}
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if seed is not None:
        dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


class _EpochLog(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if k in ("rmse", "val_rmse", "loss"))
        print(f"  epoch {epoch + 1}/{self.params['epochs']}: {values} ({time.monotonic() - self._start:.1f} s)",
              flush=True)  # fmt: skip


def train_ranker(
    train: Interactions,
    dataset: Dataset,
    config: RankingConfig = RankingConfig(),
    *,
    validation: Interactions | None = None,
    verbose: bool = True,
) -> RankingModel:
    """Fit the ranker on ``train`` for ``config.epochs`` epochs; with ``validation``, log its RMSE every epoch."""
    tf.keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    tables = build_tables(train, dataset)
    model = RankingModel(tables, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate))
    callbacks: list[tf.keras.callbacks.Callback] = [_EpochLog()] if verbose else []
    validation_data = None if validation is None else _batches(tables, validation, 8192, None)
    model.fit(
        _batches(tables, train, config.batch_size, config.seed),
        epochs=config.epochs, validation_data=validation_data, callbacks=callbacks, verbose=0,
    )  # fmt: skip
    return model


def predict(model: RankingModel, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{"rating": float32 [N], "score": float32 [N]} for pairwise rows, as the exported ranker computes them."""
    tables = model.tables
    users, items = tables.user_rows(user_ids), tables.item_rows(item_ids)
    out: dict[str, list[np.ndarray]] = {"rating": [], "score": []}
    for s in range(0, len(users), 65536):
        result = model({"user": tf.constant(users[s : s + 65536]), "item": tf.constant(items[s : s + 65536])})
        for key in out:
            out[key].append(result[key].numpy())
    return {key: np.concatenate(parts).astype(np.float32) for key, parts in out.items()}


def evaluate_rmse(model: RankingModel, test: Interactions) -> float:
    """Root mean squared error of the clipped predicted ratings on ``test``."""
    rating = predict(model, test.user_ids, test.item_ids)["rating"].astype(np.float64)
    return float(np.sqrt(np.mean((rating - test.ratings) ** 2)))
