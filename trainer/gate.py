"""The publish gate: a new release may be worse than the stable one only within absolute tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from trainer.evaluate import Evaluation


@dataclass(frozen=True)
class GateConfig:
    """Absolute tolerances against the stable release, both measured on the same held-out split."""

    max_recall_drop: float = 0.01  # retrieval recall@100 (seen items excluded, as served) may fall this much
    max_rmse_increase: float = 0.02  # ranking RMSE may rise by at most this much

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"expected {name} >= 0, got {value}")


class GateRefused(RuntimeError):
    """The new release is worse than the stable release beyond the tolerance; ``record`` says by how much."""

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record


def _comparison(name: str, new: float, stable: float, worse_by: float, tolerance: float) -> str:
    direction = "worse" if worse_by >= 0 else "better"
    return f"{name} {new:.4f} is {abs(worse_by):.4f} {direction} than stable {stable:.4f} (tolerance {tolerance:.4f})"


def check_gate(new: Evaluation, stable: Evaluation, stable_release_id: str, config: GateConfig) -> dict:
    """The audit record for the manifest; raise GateRefused (with that record) naming every metric beyond tolerance.

    Refused when new recall@100 < stable recall@100 - max_recall_drop or new rmse > stable rmse + max_rmse_increase.
    """
    new_top, stable_top = new.recall["top_100"], stable.recall["top_100"]
    checks = [
        (
            new_top < stable_top - config.max_recall_drop,
            _comparison("retrieval recall@100", new_top, stable_top, stable_top - new_top, config.max_recall_drop),
        ),
        (
            new.rmse > stable.rmse + config.max_rmse_increase,
            _comparison("ranking RMSE", new.rmse, stable.rmse, new.rmse - stable.rmse, config.max_rmse_increase),
        ),
    ]
    failures = [text for failed, text in checks if failed]
    record = {
        "stable_release_id": stable_release_id,
        "stable": stable.as_metrics(),
        "new": new.as_metrics(),
        "tolerance": asdict(config),
        "passed": not failures,
    }
    if failures:
        raise GateRefused("refused: " + "; ".join(failures), record)
    print("[trainer] gate passed: " + "; ".join(text for _, text in checks), flush=True)
    return record
