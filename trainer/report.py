"""The evaluation report: plain-text and Markdown tables, and matplotlib (Agg) plots of recall@K and training curves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; before pyplot is imported
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from trainer.models import HIDDEN_LOGS

TABLE_KS = (1, 5, 10, 20, 50, 100, 200)
DASH = "–"


@dataclass(frozen=True)
class SplitResult:
    """One split's evaluation: the JSON metrics, recall@K per ranker, per-epoch training logs and phase times."""

    split: str
    metrics: dict[str, Any]
    curves: dict[str, dict[int, float]]  # ranker name -> {K: recall@K}
    incl_seen: dict[str, float]  # ranker name -> FactorizedTopK top-100 accuracy, seen items counted
    rmse: dict[str, float]  # rating predictor name -> RMSE on the test ratings
    ndcg: dict[str, float]  # ranker name -> NDCG@10 (per test user, binary gains)
    histories: dict[str, dict[str, list[float]]]  # model -> log name -> one value per epoch
    phase_seconds: dict[str, float]


def table(result: SplitResult) -> list[list[str]]:
    """Header row, then one row per ranker and per rating predictor."""
    rows = [["", *(f"recall@{k}" for k in TABLE_KS), "NDCG@10", "top-100 incl. seen", "RMSE"]]
    for name, curve in result.curves.items():
        cells = [f"{curve[k]:.4f}" if k in curve else DASH for k in TABLE_KS]
        incl, ndcg = result.incl_seen.get(name), result.ndcg.get(name)
        rows.append(
            [name, *cells, DASH if ndcg is None else f"{ndcg:.4f}", DASH if incl is None else f"{incl:.4f}", DASH]
        )
    for name, value in result.rmse.items():
        rows.append([name, *(DASH for _ in TABLE_KS), DASH, DASH, f"{value:.4f}"])
    return rows


def as_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def as_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---", *("---:" for _ in rows[0][1:])]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def split_summary(result: SplitResult) -> str:
    m = result.metrics
    return (
        f"{m['num_train']} train / {m['num_test']} test interactions; {m['test_users']} test users, "
        f"{m['cold_test_users']} of them with no training history ({m['cold_test_pair_share']:.1%} of test pairs)"
    )


def plot_recall(results: Sequence[SplitResult], path: Path) -> None:
    """recall@K against K, one panel per split, one line per ranker."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results):
        for name, curve in result.curves.items():
            ks = sorted(curve)
            ax.plot(ks, [curve[k] for k in ks], label=name)
        ax.set(title=f"{result.split} split", xlabel="K", ylabel="recall@K (seen items removed)", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(histories: dict[str, dict[str, list[float]]]) -> list[tuple[str, str, list[float]]]:
    return [
        (model, name, values)
        for model, logs in histories.items()
        for name, values in logs.items()
        if values and not name.startswith(HIDDEN_LOGS)
    ]


def plot_training(results: Sequence[SplitResult], path: Path) -> bool:
    """Each model's per-epoch training logs, one panel per (model, log), one line per split; False if none."""
    panels = sorted({(model, name) for r in results for model, name, _ in _curves(r.histories)})
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (model, name) in zip(axes[0], panels):
        for result in results:
            values = result.histories.get(model, {}).get(name)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{result.split} split")
        ax.set(title=f"{model}: {name}", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(
    out: Path, results: Sequence[SplitResult], summary: dict[str, Any], intro: str, notes: Sequence[str]
) -> Path:
    """Write report.md, recall_at_k.png, training_curves.png (when there are logs) and metrics.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_recall(results, out / "recall_at_k.png")
    has_training = plot_training(results, out / "training_curves.png")
    lines = ["# Funnel offline evaluation", "", intro, ""]
    for result in results:
        lines += [f"## {result.split} split", "", split_summary(result) + ".", "", as_markdown(table(result)), ""]
        times = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.phase_seconds.items())
        lines += [f"Trainer phases: {times}.", ""]
    lines += ["## Recall@K", "", "![recall@K against K](recall_at_k.png)", "", "## Training curves", ""]
    lines += (
        ["![per-epoch training logs](training_curves.png)", ""]
        if has_training
        else ["The trainer reported no per-epoch logs (PipelineResult.histories is empty).", ""]
    )
    lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out / "report.md"
