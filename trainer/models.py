"""The history-based two-tower retrieval model, its training and its in-memory evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from funnel.artifacts import HISTORY_PADDING
from funnel.tf import tf

import tensorflow_recommenders as tfrs  # noqa: E402  (after funnel.tf, which selects Keras 2)

TOP_KS = (1, 5, 10, 50, 100)


Features = dict[str, np.ndarray]
"""Column arrays: "user_id" (str) and "item_id" (int64)."""
RETRIEVAL_KEYS = ("user_id", "item_id")


def item_tower(item_vocab: np.ndarray, embedding_dim: int) -> tf.keras.Model:
    """Item id (tf.int64) → embedding; unknown items share the out-of-vocabulary row."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.IntegerLookup(vocabulary=item_vocab, mask_token=None),
            tf.keras.layers.Embedding(len(item_vocab) + 1, embedding_dim),
        ]
    )


@dataclass(frozen=True)
class RetrievalConfig:
    """Hyper-parameters of the history-based retrieval model, tuned on a validation split of MovieLens 100K."""

    embedding_dim: int = 256
    hidden_dims: tuple[int, ...] = ()  # ReLU layers before the query's linear layer (measured: no gain here)
    history_dropout: float = 0.5  # share of each training query's history items left out, besides its target
    learning_rate: float = 0.005  # Adam, cosine-decayed to 0 over the epochs
    batch_size: int = 1024
    epochs: int = 20
    full_softmax_max_items: int = 50_000  # larger catalogs: in-batch softmax with logQ correction
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "batch_size", "epochs", "full_softmax_max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"expected positive hidden_dims, got {self.hidden_dims}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"expected 0 <= history_dropout < 1, got {self.history_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate}")


PADDING = HISTORY_PADDING
"""The history input's padding id; unknown item ids are ignored the same way."""


class Histories:
    """Each user's distinct training items, users sorted: the query tower's history input and the seen items."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        users, items = np.asarray(user_ids).astype(str), np.asarray(item_ids, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"expected user and item id columns of equal length, got {users.shape} and {items.shape}")
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        first = np.ones(len(users), dtype=bool)
        first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        self.items = items[first]
        self.users, starts = np.unique(users[first], return_index=True)
        self.indptr = np.append(starts, len(self.items)).astype(np.int64)

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Each user's row number, -1 for users without training items."""
        user_ids = np.asarray(user_ids).astype(str)
        pos = np.searchsorted(self.users, user_ids).clip(max=max(len(self.users) - 1, 0))
        known = (self.users[pos] == user_ids) if len(self.users) else np.zeros(len(user_ids), dtype=bool)
        return np.where(known, pos, -1)

    def get(self, user_id: str) -> np.ndarray:
        """The user's training items (empty for an unknown user)."""
        row = int(self.rows(np.array([user_id]))[0])
        return self.items[:0] if row < 0 else self.items[self.indptr[row] : self.indptr[row + 1]]

    def padded(self, user_ids: np.ndarray) -> np.ndarray:
        """int64 [len(user_ids), max(1, longest history)]: each user's items, right-padded with PADDING."""
        rows = self.rows(user_ids)
        lengths = np.where(rows >= 0, self.indptr[rows + 1] - self.indptr[rows], 0)
        out = np.full((len(rows), max(1, int(lengths.max(initial=0)))), PADDING, dtype=np.int64)
        for i in np.flatnonzero(lengths):
            out[i, : lengths[i]] = self.items[self.indptr[rows[i]] : self.indptr[rows[i] + 1]]
        return out


class QueryTower(tf.keras.layers.Layer):
    """{"user_id": string [B], "history": int64 [B, L]} → [B, D]: the mean of the history items' embeddings (zeros
    for an empty history) through config.hidden_dims ReLU layers and a linear one. PADDING and unknown item ids are
    ignored; so is the user id: the history carries the user, so a user with history but no trained id embedding is
    served like any other."""

    def __init__(self, item_vocab: np.ndarray, config: RetrievalConfig) -> None:
        super().__init__()
        self.item_lookup = tf.keras.layers.IntegerLookup(vocabulary=item_vocab, mask_token=None)
        self.history_embedding = tf.keras.layers.Embedding(len(item_vocab) + 1, config.embedding_dim)
        self.history_embedding.build((None,))  # call() reads the table directly
        self.mlp = tf.keras.Sequential(
            [tf.keras.layers.Dense(h, activation="relu") for h in config.hidden_dims]
            + [tf.keras.layers.Dense(config.embedding_dim)]
        )

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        items = tf.sparse.from_dense(self.item_lookup(inputs["history"]))  # drops lookup row 0: padding or unknown
        table = self.history_embedding.embeddings
        return self.mlp(tf.nn.safe_embedding_lookup_sparse(table, items, combiner="mean"), training=training)


class RetrievalModel(tfrs.Model):
    """History-based query tower · item-embedding candidate tower, trained with a softmax over the full catalog
    (in-batch with logQ correction above config.full_softmax_max_items); FactorizedTopK metrics in evaluation.

    A training query never sees its target, which is removed from its history (leave-one-out), nor a random
    config.history_dropout share of its other history items (denoising).
    """

    def __init__(self, item_vocab: np.ndarray, config: RetrievalConfig, item_counts: np.ndarray | None = None) -> None:
        """``item_counts``: training examples per item-lookup row, the in-batch sampling probabilities' basis."""
        super().__init__()
        self.config = config
        self.query_tower = QueryTower(item_vocab, config)
        self.candidate_tower = item_tower(item_vocab, config.embedding_dim)
        self.catalog = tf.constant(np.asarray(item_vocab, dtype=np.int64))
        self.full_softmax = len(item_vocab) <= config.full_softmax_max_items
        counts = np.ones(len(item_vocab) + 1) if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        self.sampling_probability = tf.constant(counts / counts.sum(), dtype=tf.float32)
        self.rng = tf.random.Generator.from_seed(config.seed)
        candidates = tf.data.Dataset.from_tensor_slices(item_vocab).batch(128).map(self.candidate_tower)
        # Sequential scoring: op determinism would serialize a parallel map anyway (and log an error doing so).
        top_k = tfrs.layers.factorized_top_k.Streaming(k=max(TOP_KS), num_parallel_calls=None)
        self.top_k = tfrs.metrics.FactorizedTopK(candidates=top_k.index_from_dataset(candidates), ks=TOP_KS)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True), remove_accidental_hits=True
        )

    def _training_history(self, history: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        drop = self.rng.uniform(tf.shape(history)) < self.config.history_dropout
        return tf.where(drop | (history == target[:, None]), tf.constant(PADDING, tf.int64), history)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        target, history = features["item_id"], features["history"]
        seen_by_query = self._training_history(history, target) if training else history
        query = self.query_tower({"user_id": features["user_id"], "history": seen_by_query}, training=training)
        positives = self.candidate_tower(target)
        if not training:
            self.top_k.update_state(query, positives)
        if self.full_softmax:
            logits = tf.matmul(query, self.candidate_tower(self.catalog), transpose_b=True)
            labels = self.candidate_tower.layers[0](target) - 1  # catalog row
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        probability = tf.gather(self.sampling_probability, self.candidate_tower.layers[0](target))
        return self.task(
            query, positives, candidate_sampling_probability=probability, candidate_ids=target, compute_metrics=False
        )


HIDDEN_LOGS = ("factorized_top_k", "regularization_loss", "total_loss")  # not computed while training, or = loss


class EpochLog(tf.keras.callbacks.Callback):
    """One plain line per epoch: the training loss and metrics actually computed while training."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if not k.startswith(HIDDEN_LOGS))
        seconds = time.monotonic() - self._start
        print(f"  epoch {epoch + 1}/{self.params['epochs']}: {values} ({seconds:.1f} s)", flush=True)


def seed_everything(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)  # Python, NumPy and TF global seeds
    tf.config.experimental.enable_op_determinism()  # process-wide; training runs in its own job


def _columns(features: Features, keys: tuple[str, ...]) -> tf.data.Dataset:
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"expected feature columns {list(keys)}, missing {missing}")
    lengths = {k: len(features[k]) for k in keys}
    if len(set(lengths.values())) != 1 or not lengths[keys[0]]:
        raise ValueError(f"expected non-empty feature columns of equal length, got lengths {lengths}")
    return tf.data.Dataset.from_tensor_slices({k: features[k] for k in keys})


def _retrieval_batches(
    features: Features, histories: Histories, batch_size: int, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """Batches of user_id, item_id and the user's training items as history (padded; empty for unknown users)."""
    _columns(features, RETRIEVAL_KEYS)  # checks the columns
    rows = histories.rows(features["user_id"])
    rows = np.where(rows < 0, len(histories.users), rows)  # the extra empty row below
    table = tf.RaggedTensor.from_row_splits(histories.items, np.append(histories.indptr, histories.indptr[-1]))
    columns = tf.data.Dataset.from_tensor_slices(
        {"user_id": features["user_id"], "item_id": np.asarray(features["item_id"], dtype=np.int64), "row": rows}
    )
    if shuffle_seed is not None:
        columns = columns.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)

    def attach(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        history = tf.gather(table, batch.pop("row")).to_tensor(default_value=PADDING)
        return {**batch, "history": history}

    return columns.batch(batch_size).map(attach).prefetch(2)


def _item_counts(item_ids: np.ndarray, item_vocab: np.ndarray) -> np.ndarray:
    """Training examples per item-lookup row (row 0: out of vocabulary), each at least 1."""
    order = np.argsort(item_vocab, kind="stable")
    pos = np.searchsorted(item_vocab, item_ids, sorter=order).clip(max=len(item_vocab) - 1)
    known = item_vocab[order[pos]] == item_ids
    rows = np.where(known, order[pos] + 1, 0)
    return np.maximum(np.bincount(rows, minlength=len(item_vocab) + 1), 1)


def train_retrieval(
    train: Features, item_vocab: np.ndarray, config: RetrievalConfig, verbose: bool = True,
    histories: Histories | None = None,
) -> RetrievalModel:
    """Fit the retrieval model on the training interactions, each user's training items as the query history
    (``histories``: those items when the caller has them already)."""
    seed_everything(config.seed)
    histories = histories if histories is not None else Histories(train["user_id"], train["item_id"])
    item_vocab = np.asarray(item_vocab, dtype=np.int64)
    model = RetrievalModel(item_vocab, config, _item_counts(np.asarray(train["item_id"], dtype=np.int64), item_vocab))
    batches = _retrieval_batches(train, histories, config.batch_size, shuffle_seed=config.seed)
    steps = config.epochs * -(-len(train["item_id"]) // config.batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)  # settles the last epochs
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=schedule))
    model.fit(batches, epochs=config.epochs, verbose=0, callbacks=[EpochLog()] if verbose else [])
    return model


def evaluate_retrieval(
    model: RetrievalModel, test: Features, histories: Histories, batch_size: int = 4096
) -> dict[str, float]:
    """FactorizedTopK accuracy over the whole catalog, seen items included: {"top_1": .., ..., "top_100": ..}."""
    result = model.evaluate(_retrieval_batches(test, histories, batch_size), return_dict=True, verbose=0)
    return {f"top_{k}": float(result[f"factorized_top_k/top_{k}_categorical_accuracy"]) for k in TOP_KS}
