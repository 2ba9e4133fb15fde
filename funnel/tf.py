"""Imports TensorFlow with the Keras 2 (tf-keras) backend TFRS needs; TF-using packages import this first."""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise RuntimeError("TensorFlow was imported before funnel.tf set TF_USE_LEGACY_KERAS=1; import funnel.tf first")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["TF_USE_LEGACY_KERAS"] != "1":
    raise RuntimeError(
        f"TF_USE_LEGACY_KERAS must be '1' for TensorFlow Recommenders, got {os.environ['TF_USE_LEGACY_KERAS']!r}"
    )

import tensorflow as tf  # noqa: E402

__all__ = ["tf"]
