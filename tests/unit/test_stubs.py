"""The committed gRPC stubs are what scripts/run_codegen.py generates from protos/ today."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("run_codegen", ROOT / "scripts" / "run_codegen.py")
    codegen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codegen)
    generated = codegen.generate(tmp_path)
    assert generated, "codegen produced nothing"
    stale = [p.name for p in generated if not filecmp.cmp(p, ROOT / "funnel" / "v1" / p.name, shallow=False)]
    assert not stale, f"stubs out of date, run `make stubs`: {stale}"
    committed = {p.name for p in (ROOT / "funnel" / "v1").glob("*_pb2*.py*")}
    assert committed == {p.name for p in generated if p.name != "__init__.py"}
