"""The ranking stage: a release's MLP scorer behind a gRPC service."""

import funnel.tf  # noqa: F401  (selects Keras 2 before scann or TensorFlow is imported)
