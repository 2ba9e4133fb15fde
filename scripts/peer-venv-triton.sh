#!/usr/bin/env bash
# Creates the Python environments of the benchmark's Triton peer (bench/peers/triton.py), idempotently (skipped
# while the stamp matches this script, constraints.txt and pyproject.toml):
#
#   var/peers/triton-venv       the server process (bench/peers/triton_app.py): PyTriton, which runs tritonserver
#                               and the inference functions, and Funnel's model stack at Funnel's pins (the same
#                               TensorFlow, TFRS and ScaNN), Funnel itself installed editable from this checkout.
#   var/peers/triton-stub-venv  the Python of Triton's Python-backend stubs (PyTriton's proxy models): numpy 1.x
#                               and pyzmq only.
#
# Both are made from Debian's python3.11 (/usr/bin/python3.11), not the machine's default Python: the stub
# embeds the libpython3.11 it was built against and reads the environment's standard library, and only Debian's
# build agrees with it (with pyenv's 3.11.7 a model fails to load: '_thread.RLock' object has no attribute
# '_recursion_count').
#
# Two environments because PyTriton 0.7.0's stub is built against numpy 1 (it declares numpy<2): under numpy 2
# it mangles every tensor (an INT64 [2, 3] arrives empty; a BYTES tensor aborts the stub in
# deserialize_bytes_tensor), while ScaNN 1.4.2 needs numpy 2. Tensors cross between the two as raw buffers, so
# the versions need not match. In triton-venv, PyTriton and tritonclient (~=2.50, whose releases declare
# protobuf<7 and ml-dtypes<=0.5.4 or grpcio<1.68, against Funnel's protobuf 7 and ml-dtypes 0.6) are installed
# without their declared dependencies, and those dependencies under Funnel's constraints: `pip check` lists
# exactly those declared conflicts. `python -m bench.peers.triton smoke` shows the peer serving.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRITON_VENV:-$ROOT/var/peers/triton-venv}"
STUB_VENV="${TRITON_STUB_VENV:-$ROOT/var/peers/triton-stub-venv}"
STUB_NUMPY=numpy==1.26.4  # the last numpy 1, as PyTriton declares (numpy<2)
BASE_PYTHON=/usr/bin/python3.11
PYTRITON=nvidia-pytriton==0.7.0
TRITONCLIENT=tritonclient==2.73.0
# PyTriton's and tritonclient's own requirements (their Requires-Dist, less numpy, protobuf, ml-dtypes, grpcio
# and tritonclient itself), resolved under constraints.txt
DEPS=(pyzmq sh typing_inspect wrapt typer importlib_metadata python-rapidjson urllib3 packaging
      "aiohttp<4,>=3.8.1" "geventhttpclient>=2.3.3" "greenlet<3.4.0")
STAMP="$VENV/.installed"

inputs_hash() {
    cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [ -x "$VENV/bin/python" ] && [ -x "$STUB_VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "$VENV and $STUB_VENV are up to date"
    exit 0
fi

if [ ! -x "$BASE_PYTHON" ] || ! "$BASE_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "expected Debian's python3.11 with venv at $BASE_PYTHON, found none: run as root, or" \
             "apt-get install python3.11 python3.11-venv libpython3.11" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv libpython3.11 </dev/null >/dev/null
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip
# Funnel itself (editable: the peer runs this checkout's release classes) with its pinned dependencies
"${PIP[@]}" install -c "$ROOT/constraints.txt" --config-settings editable_mode=compat -e "$ROOT"
"${PIP[@]}" install -c "$ROOT/constraints.txt" "${DEPS[@]}"
"${PIP[@]}" install --no-deps "$PYTRITON" "$TRITONCLIENT"
TF_CPP_MIN_LOG_LEVEL=2 TF_USE_LEGACY_KERAS=1 "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import numpy, pytriton, tensorflow, scann  # noqa: F401  (each must import)

print("triton venv:", ", ".join(f"{p} {md.version(p)}" for p in (
    "nvidia-pytriton", "tritonclient", "tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "numpy",
    "protobuf", "grpcio", "ml-dtypes")))
EOF
# the stubs' environment: the same pyzmq as the server's (they talk over ZeroMQ), numpy 1
[ -x "$STUB_VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$STUB_VENV"
PYZMQ="pyzmq==$("$VENV/bin/python" -c 'import zmq; print(zmq.__version__)')"
"$STUB_VENV/bin/python" -m pip --quiet install --upgrade pip
"$STUB_VENV/bin/python" -m pip --quiet install "$STUB_NUMPY" "$PYZMQ"
"$STUB_VENV/bin/python" -c 'import numpy, zmq; print("triton stub venv: numpy", numpy.__version__, "pyzmq", zmq.__version__)'
echo "pip check (expected: PyTriton's numpy<2 and tritonclient's ml-dtypes<=0.5.4, declared and overridden):"
"$VENV/bin/python" -m pip check || true
echo "$want" > "$STAMP"
