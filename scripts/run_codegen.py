"""Generates the Python gRPC stubs for protos/funnel/v1 into the funnel.v1 package (grpc's run_codegen.py style)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto under protos/ into ``out_dir`` (the funnel/v1/*_pb2*.py files); return them."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {protos}")
    package = out_dir / "funnel" / "v1"
    (package / "__init__.py").write_text('"""Generated gRPC stubs for the funnel.v1 API (scripts/run_codegen.py)."""\n')
    return sorted(package.glob("*_pb2*.py*")) + [package / "__init__.py"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the project root)")
    for path in generate(parser.parse_args().out):
        print(path, file=sys.stderr)
