"""The history-based two-tower retrieval model, its training and its in-memory evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from funnel.tf import tf

import numpy as np
import tensorflow_recommenders as tfrs

from funnel.release.files import HISTORY_PADDING, Histories, IdIndex

TOP_KS = (1, 5, 10, 50, 100)


Features = dict[str, np.ndarray]
"""Column arrays: "user_id" (str) and "item_id" (int64), optionally "timestamp" (int64; else file order is time)."""
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
    # Recency: the query pools the history with learned weights by position from its end (besides the plain mean),
    # and a training query sees only the items before its target in time (what a served query predicts); off: the
    # plain mean of every other training item.
    recency: bool = True
    recency_scale: float = 10.0  # the position weights start at exp(-position from the end / recency_scale)
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
"""The history input's padding id; unknown item ids are ignored the same way, but keep their place in time."""
DROPPED = -2  # a training history's left-out item: an id no catalog holds, so it keeps its place but is not embedded


RECENCY_BUCKETS = 64  # position-from-end buckets: one per position below 32, then four per doubling


def recency_bucket(position: tf.Tensor) -> tf.Tensor:
    """The weight bucket of a history position counted from its end (0: the latest item)."""
    far = 32 + tf.cast(4.0 * tf.math.log(tf.cast(tf.maximum(position, 32), tf.float32) / 32.0) / np.log(2.0), tf.int64)
    return tf.minimum(tf.where(position < 32, position, far), RECENCY_BUCKETS - 1)


class QueryTower(tf.keras.layers.Layer):
    """{"user_id": string [B], "history": int64 [B, L] oldest first, optional "length": int64 [B]} → [B, D]: the
    mean of the history items' embeddings (zeros for an empty history) and, with config.recency, their mean
    weighted by a learned weight per position from the history's end, through config.hidden_dims ReLU layers and a
    linear one. ``length`` keeps each row's first ``length`` items (default: all). PADDING and unknown item ids
    are ignored (an unknown id still takes its place in time); so is the user id: the history carries the user, so a
    user with history but no trained id embedding is served like any other."""

    def __init__(self, item_vocab: np.ndarray, config: RetrievalConfig) -> None:
        super().__init__()
        self.recency = config.recency
        self.item_lookup = tf.keras.layers.IntegerLookup(vocabulary=item_vocab, mask_token=None)
        self.history_embedding = tf.keras.layers.Embedding(len(item_vocab) + 1, config.embedding_dim)
        self.history_embedding.build((None,))  # call() reads the table directly
        if config.recency:
            bucket = np.arange(RECENCY_BUCKETS)
            start = -np.where(bucket < 32, bucket, 32 * 2 ** ((bucket - 32) / 4))  # each bucket's first position
            self.position_logits = self.add_weight(
                name="position_logits",
                shape=(RECENCY_BUCKETS,),
                initializer=tf.keras.initializers.Constant(np.maximum(start / config.recency_scale, -30.0)),
            )
        self.mlp = tf.keras.Sequential(
            [tf.keras.layers.Dense(h, activation="relu") for h in config.hidden_dims]
            + [tf.keras.layers.Dense(config.embedding_dim)]
        )

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        history = inputs["history"]
        present = history != PADDING
        place = tf.cumsum(tf.cast(present, tf.int64), axis=1, exclusive=True)  # among the row's items, in time order
        length = inputs.get("length")
        if length is None:
            length = tf.reduce_sum(tf.cast(present, tf.int64), axis=1)
        rows = self.item_lookup(tf.where(present & (place < length[:, None]), history, PADDING))  # 0: none/unknown
        # Sparse lookups: a step costs the histories' items, not batch x longest history x embedding width.
        cells = tf.where(rows > 0)
        ids = tf.SparseTensor(cells, tf.gather_nd(rows, cells), tf.shape(rows, out_type=tf.int64))
        table = self.history_embedding.embeddings
        pooled = [tf.nn.safe_embedding_lookup_sparse(table, ids, combiner="mean")]
        if self.recency:
            position = tf.maximum(length[:, None] - 1 - place, 0)  # from the end: 0 is the latest
            weight = tf.exp(tf.gather(self.position_logits, recency_bucket(tf.gather_nd(position, cells))))
            weights = tf.SparseTensor(cells, weight, ids.dense_shape)
            pooled.append(tf.nn.safe_embedding_lookup_sparse(table, ids, weights, combiner="mean"))  # Σ w e / Σ w
        return self.mlp(tf.concat(pooled, axis=1), training=training)


class RetrievalModel(tfrs.Model):
    """History-based query tower · item-embedding candidate tower, trained with a softmax over the full catalog
    (in-batch with logQ correction above config.full_softmax_max_items); FactorizedTopK metrics in evaluation.

    A training query never sees its target, which is removed from its history (leave-one-out; with
    config.recency, every item from the target on in time), nor a random config.history_dropout share of its other
    history items (denoising).
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
        """The history without its target and a random share of its items, which keep their places in time (as
        items unknown to the tower do)."""
        drop = (self.rng.uniform(tf.shape(history)) < self.config.history_dropout) | (history == target[:, None])
        return tf.where(drop & (history != PADDING), tf.constant(DROPPED, tf.int64), history)

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        target, history = features["item_id"], features["history"]
        inputs = {"user_id": features["user_id"], "history": history}
        if training:
            inputs["history"] = self._training_history(history, target)
            if self.config.recency:  # the items before the target in time
                inputs["length"] = features["position"]
        query = self.query_tower(inputs, training=training)
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
    item_ids = np.asarray(features["item_id"], dtype=np.int64)
    rows = histories.rows(features["user_id"])
    position = history_positions(histories, rows, item_ids)
    rows = np.where(rows < 0, len(histories.users), rows)  # the extra empty row below
    table = tf.RaggedTensor.from_row_splits(histories.items, np.append(histories.indptr, histories.indptr[-1]))
    columns = tf.data.Dataset.from_tensor_slices(
        {"user_id": features["user_id"], "item_id": item_ids, "row": rows, "position": position}
    )
    if shuffle_seed is not None:
        columns = columns.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)

    def attach(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        history = tf.gather(table, batch.pop("row")).to_tensor(default_value=PADDING)
        return {**batch, "history": history}

    return columns.batch(batch_size).map(attach).prefetch(2)


def history_positions(histories: Histories, rows: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """int64 place of each (history row, item) in that row's time-ordered history: the number of items before it
    in time (0 for a row of -1 or an item not in the row)."""
    rows, item_ids = np.asarray(rows, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
    if not len(histories.items):
        return np.zeros(len(rows), dtype=np.int64)
    codes, item_codes = np.unique(histories.items, return_inverse=True)
    # One key per history entry, distinct as a history holds each of its user's items once
    keys = np.repeat(np.arange(len(histories.users)), np.diff(histories.indptr)) * len(codes) + item_codes
    found = IdIndex(codes).rows(item_ids)  # -1: the item is in no history
    known = (rows >= 0) & (found >= 0)
    at = IdIndex(keys).rows(np.where(known, rows * len(codes) + found, -1))  # entry of each known pair, else -1
    hit = at >= 0
    return np.where(hit, at - histories.indptr[np.maximum(rows, 0)], 0).astype(np.int64)


def _item_counts(item_ids: np.ndarray, item_vocab: np.ndarray) -> np.ndarray:
    """Training examples per item-lookup row (row 0: out of vocabulary), each at least 1."""
    rows = IdIndex(item_vocab).rows(item_ids) + 1  # IntegerLookup's rows: vocabulary entry k is row k + 1, OOV 0
    return np.maximum(np.bincount(rows, minlength=len(item_vocab) + 1), 1)


def train_retrieval(
    train: Features,
    item_vocab: np.ndarray,
    config: RetrievalConfig,
    verbose: bool = True,
    histories: Histories | None = None,
) -> RetrievalModel:
    """Fit the retrieval model on the training interactions, each user's training items as the query history
    (``histories``: those items when the caller has them already)."""
    seed_everything(config.seed)
    histories = (
        histories if histories is not None else Histories(train["user_id"], train["item_id"], train.get("timestamp"))
    )
    item_vocab = np.asarray(item_vocab, dtype=np.int64)
    reserved = np.intersect1d(item_vocab, [PADDING, DROPPED])
    if len(reserved):
        raise ValueError(
            f"expected item ids other than {PADDING} and {DROPPED} (reserved in histories), got {reserved.tolist()}"
        )
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
