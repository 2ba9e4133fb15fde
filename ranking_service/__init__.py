"""The ranking stage: a release's ranker, which scores candidates given the user's history, behind a gRPC service."""

import funnel.tf  # noqa: F401  (selects Keras 2 before scann or TensorFlow is imported)
