"""The retrieval stage: a release's query tower and ScaNN index behind a gRPC service."""

import funnel.tf  # noqa: F401  (selects Keras 2 before scann or TensorFlow is imported)
