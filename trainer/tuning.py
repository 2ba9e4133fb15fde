"""Baselines tuned on a validation carve of the training part (recall@10), then refit on all of it for the test."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from funnel.data.loaders import Interactions
from trainer.baselines import (
    EvalSet,
    Positions,
    Scorer,
    ease_weights,
    factor_scorer,
    hit_rates,
    ials_factors,
    item_item_scorer,
    item_knn_weights,
    popularity_counts,
    popularity_scorer,
    rank_by_scores,
    training_matrix,
    user_rows,
)
from trainer.split import VALIDATION_SEED, make_split

BASELINES = ("popularity", "item_knn", "ease", "ials")
TUNE_K = 10  # tuned on recall@TUNE_K

Params = dict[str, Any]
Factorizer = Callable[..., tuple[np.ndarray, np.ndarray]]
"""(binary user x item history, *, factors, regularization, alpha, iterations, seed) -> (user factors [users, d],
item factors [items, d]); ials_factors (implicit's iALS) by default, a stand-in in tests."""


@dataclass(frozen=True)
class Grids:
    """The settings tried: every EASE λ, every item-kNN (neighbors, shrink) pair (None neighbors keeps all), and for
    iALS a coordinate-wise search over factors, regularization and alpha from each one's middle value."""

    ease_lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)
    knn_neighbors: tuple[int | None, ...] = (20, 50, 100, 200, None)
    knn_shrinks: tuple[float, ...] = (0.0, 10.0, 50.0)
    ials_factors: tuple[int, ...] = (64, 128, 256)
    ials_regularizations: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)
    ials_alphas: tuple[float, ...] = (1.0, 2.0, 5.0, 20.0)
    ials_iterations: int = 15
    ials_passes: int = 3  # coordinate sweeps at most; stops early after a sweep that changes nothing


def baseline_scorer(
    name: str,
    params: Mapping[str, Any],
    train: Interactions,
    data: EvalSet,
    *,
    seed: int = 0,
    factorize: Factorizer = ials_factors,
) -> Scorer:
    """Baseline ``name`` (one of BASELINES) fitted on ``train`` with ``params``, scoring ``data``'s rows; users with
    no training history get popularity scores."""
    counts = popularity_counts(train, data.items)
    if name == "popularity":
        return popularity_scorer(counts)
    history = training_matrix(train, data.items)
    if name == "item_knn":
        return item_item_scorer(data, item_knn_weights(history, params["neighbors"], params["shrink"]), counts)
    if name == "ease":
        return item_item_scorer(data, ease_weights(history, params["lam"]), counts)
    if name == "ials":
        users, items = factorize(history, seed=seed, **params)
        if (users.shape[0], items.shape[0]) != history.shape or users.shape[1:] != items.shape[1:]:
            raise ValueError(
                f"expected user and item factors of shapes ({history.shape[0]}, d) and "
                f"({history.shape[1]}, d), got {users.shape} and {items.shape}"
            )
        return factor_scorer(data, user_rows(train, data), users, items, counts)
    raise ValueError(f"expected a baseline in {BASELINES}, got {name!r}")


def _settings(name: str, grids: Grids) -> list[Params]:
    """The settings a full grid search tries (not iALS, searched coordinate-wise)."""
    if name == "popularity":
        return [{}]
    if name == "item_knn":
        return [{"neighbors": k, "shrink": s} for s in grids.knn_shrinks for k in grids.knn_neighbors]
    if name == "ease":
        return [{"lam": lam} for lam in grids.ease_lambdas]
    raise ValueError(f"expected a grid-searched baseline, got {name!r}")


def coordinate_search(
    axes: Mapping[str, tuple[Any, ...]], evaluate: Callable[[Params], float], passes: int
) -> tuple[Params, float, int]:
    """(best setting, its score, settings evaluated): from each axis's middle value, sweep one axis at a time keeping
    any strictly better value, until a sweep changes nothing or after ``passes`` sweeps."""
    if not axes or any(not values for values in axes.values()):
        raise ValueError(f"expected axes with at least one value each, got {dict(axes)}")
    scores: dict[tuple, float] = {}

    def score(setting: Params) -> float:
        key = tuple(setting[name] for name in axes)
        if key not in scores:
            scores[key] = evaluate(setting)
        return scores[key]

    best = {name: values[len(values) // 2] for name, values in axes.items()}
    best_score = score(best)
    for _ in range(passes):
        moved = False
        for name, values in axes.items():
            for value in values:
                candidate = {**best, name: value}
                if (candidate_score := score(candidate)) > best_score:
                    best, best_score, moved = candidate, candidate_score, True
        if not moved:
            break
    return best, best_score, len(scores)


def describe(name: str, params: Mapping[str, Any]) -> str:
    """A setting as the progress lines print it, e.g. "EASE λ=300"."""
    if name == "ease":
        return f"EASE λ={params['lam']:g}"
    if name == "item_knn":
        neighbors = "all" if params["neighbors"] is None else params["neighbors"]
        return f"item-kNN neighbors={neighbors} shrink={params['shrink']:g}"
    if name == "ials":
        return (
            f"iALS factors={params['factors']} regularization={params['regularization']:g} "
            f"alpha={params['alpha']:g} iterations={params['iterations']}"
        )
    return name


def validation_carve(train: Interactions, catalog: np.ndarray, carve: str = "recent") -> tuple[Interactions, EvalSet]:
    """(fit part, validation EvalSet): ``train`` split again the way the test part was split off (``carve``, a split
    of trainer.split: "recent" holds out each user's most recent 20%)."""
    fit_idx, validation_idx = make_split(carve, train, seed=VALIDATION_SEED)
    if not len(validation_idx):
        raise ValueError(
            f"expected training users with at least 5 interactions to hold out validation from, got "
            f"{len(np.unique(train.user_ids))} users with {len(train)} interactions"
        )
    fit = train.take(fit_idx)
    return fit, EvalSet.build(fit, train.take(validation_idx), catalog)


def tune_baselines(
    train: Interactions,
    catalog: np.ndarray,
    *,
    seed: int = 0,
    grids: Grids = Grids(),
    factorize: Factorizer = ials_factors,
    carve: str = "recent",
) -> dict[str, dict]:
    """Per baseline, the setting with the best recall@10 on a validation carve of ``train`` (validation_carve; the
    fit part's items excluded from each list) and that recall: {name: {"params", "validation_recall_at_10",
    "settings_tried"}}. Ties keep the earlier setting. Reads nothing but ``train``."""
    fit, validation = validation_carve(train, catalog, carve)

    def recall(name: str, params: Params) -> float:
        scorer = baseline_scorer(name, params, fit, validation, seed=seed, factorize=factorize)
        return hit_rates(rank_by_scores(scorer, validation, TUNE_K).unseen, [TUNE_K])[TUNE_K]

    records: dict[str, dict] = {}
    for name in BASELINES:
        start = time.perf_counter()
        if name == "ials":
            axes = {
                "factors": grids.ials_factors,
                "regularization": grids.ials_regularizations,
                "alpha": grids.ials_alphas,
            }
            fixed: Params = {"iterations": grids.ials_iterations}

            def ials_recall(params: Params, fixed: Params = fixed) -> float:
                return recall("ials", {**params, **fixed})

            best, best_recall, tried = coordinate_search(axes, ials_recall, grids.ials_passes)
            best = {**best, **fixed}
        else:
            settings = _settings(name, grids)
            recalls = [recall(name, params) for params in settings]
            best, best_recall, tried = settings[int(np.argmax(recalls))], max(recalls), len(settings)
        records[name] = {"params": best, "validation_recall_at_10": best_recall, "settings_tried": tried}
        seconds = time.perf_counter() - start
        action = "popularity: nothing to tune" if name == "popularity" else f"tuned {describe(name, best)}"
        print(
            f"[eval] {action} (validation recall@10 {best_recall:.4f}, {tried} setting{'s' * (tried != 1)}) "
            f"in {seconds:.1f} s",
            flush=True,
        )
    return records


def tuned_baselines(
    train: Interactions,
    data: EvalSet,
    *,
    seed: int = 0,
    grids: Grids = Grids(),
    factorize: Factorizer = ials_factors,
    carve: str = "recent",
) -> tuple[dict[str, Positions], dict[str, dict]]:
    """(test Positions per baseline in BASELINES, tuning record): each baseline tuned on a validation carve of
    ``train`` (tune_baselines, which never sees ``data``'s test pairs), then refit on all of ``train`` and ranked
    over ``data``."""
    records = tune_baselines(train, data.items, seed=seed, grids=grids, factorize=factorize, carve=carve)
    positions = {
        name: rank_by_scores(
            baseline_scorer(name, records[name]["params"], train, data, seed=seed, factorize=factorize), data
        )
        for name in BASELINES
    }
    return positions, records
