"""Where Funnel keeps local state by default: the checkout's var/ for the dataset cache, artifacts and logs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR = PROJECT_ROOT / "var"
CACHE_ENV = "FUNNEL_CACHE_DIR"
ARTIFACT_ROOT_ENV = "FUNNEL_ARTIFACT_ROOT"


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$FUNNEL_CACHE_DIR`` if set, else ``var/cache`` in the checkout: every tool downloads datasets there."""
    return Path(environ.get(CACHE_ENV) or VAR / "cache")


def default_artifact_root() -> Path:
    """``$FUNNEL_ARTIFACT_ROOT`` if set, else ``var/artifacts`` in the checkout."""
    return Path(os.environ.get(ARTIFACT_ROOT_ENV) or VAR / "artifacts")
