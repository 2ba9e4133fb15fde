"""Funnel trainer: trains the TFRS retrieval and ranking models, exports them, indexes items and publishes a release."""

import funnel.tf  # noqa: F401  (selects Keras 2 before scann, TFRS or TensorFlow is imported)
