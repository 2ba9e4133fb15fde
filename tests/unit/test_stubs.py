"""The committed gRPC stubs are what scripts/run_codegen.py generates from protos/ today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "funnel" / "v1"


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    # A separate process: grpc_tools' protoc extension crashes when loaded beside TensorFlow's protobuf runtime.
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_codegen.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    generated = sorted((tmp_path / "funnel" / "v1").iterdir())
    assert len(generated) == len(list(STUBS.glob("*_pb2*.py*"))) + 1, "a stub was added or removed: `make stubs`"
    stale = [p.name for p in generated if not filecmp.cmp(p, STUBS / p.name, shallow=False)]
    assert not stale, f"stubs out of date, run `make stubs`: {stale}"
