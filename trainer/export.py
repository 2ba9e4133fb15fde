"""Export the retrieval towers as plain SavedModels with explicit signatures and a funnel.json sidecar."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from funnel.tf import tf

from funnel.release.files import HISTORY_PADDING
from funnel.release.store import SIDECAR


class _TowerServing(tf.Module):
    """serving_default(<id>: [None]) -> {"embedding": float32 [None, D]}, the input named and typed by ``spec``."""

    def __init__(self, tower: tf.keras.Model, spec: tf.TensorSpec) -> None:
        super().__init__()
        self.tower = tower
        self.serve = tf.function(
            lambda ids: {"embedding": tf.cast(self.tower(ids), tf.float32)}, input_signature=[spec]
        )


class _QueryServing(tf.Module):
    """serving_default(user_id: string [None], history: int64 [None, None]) -> {"embedding": float32 [None, D]}."""

    def __init__(self, tower: tf.keras.layers.Layer) -> None:
        super().__init__()
        self.tower = tower

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None, None], tf.int64, name="history"),
        ]
    )
    def serve(self, user_id: tf.Tensor, history: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": tf.cast(self.tower({"user_id": user_id, "history": history}), tf.float32)}


def candidate_tower_fingerprint(tower: tf.keras.Model) -> str:
    """Hex sha256 over the tower's weights in layer order: dtype, shape and little-endian bytes of each."""
    digest = hashlib.sha256(b"funnel-candidate-tower-v1")
    for weight in tower.get_weights():
        digest.update(f"{weight.dtype.str}{weight.shape};".encode())
        digest.update(weight.astype(weight.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def save_module(module: tf.Module, directory: Path, metadata: dict) -> None:
    """Save ``module`` with its ``serve`` function as serving_default into the new ``directory``, plus the sidecar."""
    if directory.exists():
        raise FileExistsError(f"expected a new SavedModel directory, got existing {directory}")
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    sidecar = directory / SIDECAR
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_query_tower(
    tower: tf.keras.layers.Layer, directory: Path, *, candidate_fingerprint: str, training_run: str
) -> None:
    """SavedModel: serving_default(user_id: string [None], history: int64 [None, None]) -> {"embedding": [None, D]}.

    ``history`` holds each user's item ids right-padded with -1; padding and unknown ids are ignored.
    """
    probe = {"user_id": tf.constant([""]), "history": tf.constant([[HISTORY_PADDING]], dtype=tf.int64)}
    metadata = {
        "candidate_tower_fingerprint": candidate_fingerprint,
        "embedding_dim": int(tower(probe).shape[-1]),
        "training_run": training_run,
    }
    save_module(_QueryServing(tower), Path(directory), metadata)


def export_candidate_tower(tower: tf.keras.Model, directory: Path, *, training_run: str) -> str:
    """SavedModel: serving_default(item_id: int64 [None]) -> {"embedding": float32 [None, D]}; returns its fingerprint.

    The sidecar records the fingerprint that the query tower and the index built from this tower also carry.
    """
    fingerprint = candidate_tower_fingerprint(tower)
    metadata = {"candidate_tower_fingerprint": fingerprint, "training_run": training_run}
    save_module(_TowerServing(tower, tf.TensorSpec([None], tf.int64, name="item_id")), Path(directory), metadata)
    return fingerprint
