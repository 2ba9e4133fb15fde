"""docs/configuration.md is what scripts/gen_config_docs.py generates from the config dataclasses today."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from funnel.serving.config import reference_markdown, setting

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_fresh() -> None:
    generator = _generator()
    committed = generator.OUTPUT.read_text(encoding="utf-8") if generator.OUTPUT.is_file() else ""
    assert committed == generator.render(), f"docs/configuration.md is out of date: run `{generator.COMMAND}`"


@dataclasses.dataclass(frozen=True)
class _Example:
    """Example settings."""

    root: str = setting("EXAMPLE_ROOT", help="where | it <lives>")
    retries: int = setting("EXAMPLE_RETRIES", 3, "attempts")
    name: str = setting("EXAMPLE_NAME", "", "a label")


def test_reference_rows_name_flag_env_type_default_and_help() -> None:
    text = reference_markdown([_Example])
    assert text.startswith("## `_Example` (`tests.unit.test_docs`)\n\nExample settings.\n\n| flag |")
    assert "| `--root` | `EXAMPLE_ROOT` | `str` | required | where \\| it \\<lives> |" in text
    assert "| `--retries` | `EXAMPLE_RETRIES` | `int` | `3` | attempts |" in text
    assert '| `--name` | `EXAMPLE_NAME` | `str` | `""` (empty) | a label |' in text


def test_reference_refuses_a_class_that_is_not_a_dataclass() -> None:
    with pytest.raises(TypeError, match="config dataclass"):
        reference_markdown([int])
