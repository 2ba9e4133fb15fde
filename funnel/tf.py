"""Imports TensorFlow with the Keras 2 (tf-keras) backend TFRS needs; TF-using packages import this first."""

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise RuntimeError("TensorFlow was imported before funnel.tf set TF_USE_LEGACY_KERAS=1; import funnel.tf first")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["TF_USE_LEGACY_KERAS"] != "1":
    raise RuntimeError(
        f"TF_USE_LEGACY_KERAS must be '1' for TensorFlow Recommenders, got {os.environ['TF_USE_LEGACY_KERAS']!r}"
    )

import tensorflow as tf

__all__ = ["load_serving_signature", "set_threads", "string_tensor", "tf"]


def string_tensor(values: Sequence[str] | np.ndarray) -> tf.Tensor:
    """A tf.string vector of Python strings (or a numpy array of them), as the serving signatures read ids."""
    return tf.constant(np.asarray(values, dtype=object), dtype=tf.string)


def set_threads(threads: int) -> None:
    """Cap TensorFlow's intra- and inter-op thread pools (0 keeps TensorFlow's default, one per core); call before
    the first op runs. Serving runs many small ops, where extra pool threads cost more CPU than they save."""
    if threads < 0:
        raise ValueError(f"expected a thread count >= 0, got {threads}")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_serving_signature(path: str | os.PathLike[str]) -> Any:
    """The ``serving_default`` signature of the SavedModel at ``path``, with Grappler's arithmetic optimizer turned
    off first (process-wide; a loaded model's graph is optimized at its first call).

    Its SimplifyEmbeddingLookup stage rewrites a gather-then-pool of embedding rows into a pool over a read of the
    whole table, and a table variable that is also gathered from row by row is in copy-on-read mode, so every call
    copied the table: 256 MB and about 240 ms a call for the query tower of a 1M-item catalog, against 0.7 ms
    without the rewrite. The stage's other simplifications save nothing measurable on graphs this small.
    """
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    return tf.saved_model.load(str(path)).signatures["serving_default"]
