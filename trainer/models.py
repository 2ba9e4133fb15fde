"""The TFRS two-tower retrieval model and MLP ranking model of the basic retrieval / ranking tutorials."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from funnel.tf import tf

import tensorflow_recommenders as tfrs  # noqa: E402  (after funnel.tf, which selects Keras 2)

TOP_KS = (1, 5, 10, 50, 100)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the TFRS tutorial values."""

    embedding_dim: int = 32
    learning_rate: float = 0.1
    train_batch_size: int = 8192
    eval_batch_size: int = 4096
    epochs: int = 3
    shuffle_buffer: int = 100_000
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "train_batch_size", "eval_batch_size", "epochs", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"expected learning_rate > 0, got {self.learning_rate}")


Features = dict[str, np.ndarray]
"""Column arrays: "user_id" (str), "item_id" (int64) and, for ranking, "rating" (float32)."""
RETRIEVAL_KEYS = ("user_id", "item_id")
RANKING_KEYS = ("user_id", "item_id", "rating")


def user_tower(user_vocab: np.ndarray, embedding_dim: int) -> tf.keras.Model:
    """User id (tf.string) → embedding; unknown users share the out-of-vocabulary row."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.StringLookup(vocabulary=user_vocab, mask_token=None),
            tf.keras.layers.Embedding(len(user_vocab) + 1, embedding_dim),
        ]
    )


def item_tower(item_vocab: np.ndarray, embedding_dim: int) -> tf.keras.Model:
    """Item id (tf.int64) → embedding; unknown items share the out-of-vocabulary row."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.IntegerLookup(vocabulary=item_vocab, mask_token=None),
            tf.keras.layers.Embedding(len(item_vocab) + 1, embedding_dim),
        ]
    )


class RetrievalModel(tfrs.Model):
    """Two towers scored by dot product; FactorizedTopK over every catalog item (evaluation only)."""

    def __init__(self, user_vocab: np.ndarray, item_vocab: np.ndarray, embedding_dim: int) -> None:
        super().__init__()
        self.query_tower = user_tower(user_vocab, embedding_dim)
        self.candidate_tower = item_tower(item_vocab, embedding_dim)
        candidates = tf.data.Dataset.from_tensor_slices(item_vocab).batch(128).map(self.candidate_tower)
        # Sequential scoring: op determinism would serialize a parallel map anyway (and log an error doing so).
        top_k = tfrs.layers.factorized_top_k.Streaming(k=max(TOP_KS), num_parallel_calls=None)
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(candidates=top_k.index_from_dataset(candidates), ks=TOP_KS)
        )

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.task(
            self.query_tower(features["user_id"]),
            self.candidate_tower(features["item_id"]),
            compute_metrics=not training,
        )


def scorer(user_vocab: np.ndarray, item_vocab: np.ndarray, embedding_dim: int) -> tf.keras.Model:
    """(user id, item id) → predicted rating [batch, 1]: concatenated embeddings through a 256-64-1 MLP."""
    user_id = tf.keras.Input(shape=(), dtype=tf.string, name="user_id")
    item_id = tf.keras.Input(shape=(), dtype=tf.int64, name="item_id")
    x = tf.keras.layers.Concatenate()(
        [user_tower(user_vocab, embedding_dim)(user_id), item_tower(item_vocab, embedding_dim)(item_id)]
    )
    x = tf.keras.layers.Dense(256, activation="relu")(x)
    x = tf.keras.layers.Dense(64, activation="relu")(x)
    return tf.keras.Model([user_id, item_id], tf.keras.layers.Dense(1)(x), name="scorer")


class RankingModel(tfrs.Model):
    """The scorer trained on explicit ratings with MSE loss and an RMSE metric."""

    def __init__(self, user_vocab: np.ndarray, item_vocab: np.ndarray, embedding_dim: int) -> None:
        super().__init__()
        self.scorer = scorer(user_vocab, item_vocab, embedding_dim)
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError()],
        )

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.scorer([features["user_id"], features["item_id"]])

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.task(labels=features["rating"], predictions=self(features))


class _EpochLog(tf.keras.callbacks.Callback):
    """One plain line per epoch: the training loss and metrics actually computed while training."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        hidden = ("factorized_top_k", "regularization", "total")  # top-k is not computed while training
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if not k.startswith(hidden))
        seconds = time.monotonic() - self._start
        print(f"  epoch {epoch + 1}/{self.params['epochs']}: {values} ({seconds:.1f} s)", flush=True)


def _fit(model: tfrs.Model, batches: tf.data.Dataset, config: TrainConfig, verbose: bool) -> None:
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=config.learning_rate))
    model.fit(batches, epochs=config.epochs, verbose=0, callbacks=[_EpochLog()] if verbose else [])


def _seed(seed: int) -> None:
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


def _train_batches(features: Features, keys: tuple[str, ...], config: TrainConfig) -> tf.data.Dataset:
    # As in the tutorials: shuffled once, then cached, so every epoch sees the same batches.
    shuffled = _columns(features, keys).shuffle(config.shuffle_buffer, seed=config.seed)
    return shuffled.batch(config.train_batch_size).cache()


def train_retrieval(
    train: Features, user_vocab: np.ndarray, item_vocab: np.ndarray, config: TrainConfig, verbose: bool = True
) -> RetrievalModel:
    """Fit the retrieval model on the training interactions (one progress line per epoch if verbose)."""
    _seed(config.seed)
    model = RetrievalModel(user_vocab, item_vocab, config.embedding_dim)
    _fit(model, _train_batches(train, RETRIEVAL_KEYS, config), config, verbose)
    return model


def evaluate_retrieval(model: RetrievalModel, test: Features, config: TrainConfig) -> dict[str, float]:
    """FactorizedTopK accuracy over the whole catalog: {"top_1": .., ..., "top_100": ..}."""
    result = model.evaluate(_columns(test, RETRIEVAL_KEYS).batch(config.eval_batch_size), return_dict=True, verbose=0)
    return {f"top_{k}": float(result[f"factorized_top_k/top_{k}_categorical_accuracy"]) for k in TOP_KS}


def train_ranking(
    train: Features, user_vocab: np.ndarray, item_vocab: np.ndarray, config: TrainConfig, verbose: bool = True
) -> RankingModel:
    """Fit the ranking model on the training ratings (one progress line per epoch if verbose)."""
    _seed(config.seed)
    model = RankingModel(user_vocab, item_vocab, config.embedding_dim)
    _fit(model, _train_batches(train, RANKING_KEYS, config), config, verbose)
    return model


def evaluate_ranking(model: RankingModel, test: Features, config: TrainConfig) -> float:
    """Root mean squared error of the predicted ratings on the test interactions."""
    result = model.evaluate(_columns(test, RANKING_KEYS).batch(config.eval_batch_size), return_dict=True, verbose=0)
    return float(result["root_mean_squared_error"])
