"""Importing every unit test module in a fresh interpreter loads no TensorFlow, TFRS or ScaNN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.unit.conftest import HEAVY


def test_the_unit_modules_import_without_tensorflow() -> None:
    modules = sorted(f"tests.unit.{p.stem}" for p in Path(__file__).parent.glob("test_*.py"))
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True
    )
    assert len(modules) > 10 and json.loads(done.stdout.splitlines()[-1]) == []
