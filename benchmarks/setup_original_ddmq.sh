#!/usr/bin/env bash
# Create a virtualenv holding the original ddmq 0.9.14 from PyPI, for comparison benchmarks.
#
# Usage: bash benchmarks/setup_original_ddmq.sh [VENV_DIR]     (default: /tmp/ddmq-original-venv)
# Prints the venv's python interpreter path on its last line; pass it to
# `benchmarks/queue_throughput.py --original-python PATH`.
#
# ddmq 0.9.14 calls yaml.load() without a Loader, a TypeError on PyYAML >= 6, so PyYAML is pinned
# to 5.4.1. That release has no wheels for recent Pythons and its sdist does not build with
# Cython 3, so it is built without build isolation against cython<3.
# Running the script again reuses a venv that already imports ddmq 0.9.14 with PyYAML 5.x.
set -euo pipefail

VENV_DIR="${1:-/tmp/ddmq-original-venv}"
PYTHON="${PYTHON:-python3}"
VENV_PY="$VENV_DIR/bin/python"

is_ready() {
    [ -x "$VENV_PY" ] && "$VENV_PY" - <<'PY' 2>/dev/null
import importlib.metadata as md
import yaml
assert md.version("ddmq") == "0.9.14"
assert yaml.__version__.startswith("5.")
PY
}

if is_ready; then
    echo "ddmq 0.9.14 already installed in $VENV_DIR" >&2
else
    if [ ! -x "$VENV_PY" ]; then
        "$PYTHON" -m venv "$VENV_DIR"
    fi
    "$VENV_PY" -m pip install --quiet --upgrade pip
    # Build requirements of the PyYAML 5.4.1 sdist (setuptools < 72 still provides the
    # setuptools.command.test module its setup.py may import on recent Pythons).
    "$VENV_PY" -m pip install --quiet 'cython<3' wheel 'setuptools<72'
    "$VENV_PY" -m pip install --quiet --no-build-isolation 'PyYAML==5.4.1'
    # --no-deps: ddmq's only dependency is pyyaml, already pinned above.
    "$VENV_PY" -m pip install --quiet --no-deps 'ddmq==0.9.14'
    if ! is_ready; then
        echo "setup failed: $VENV_PY cannot import ddmq 0.9.14 with PyYAML 5.x" >&2
        exit 1
    fi
fi

echo "$VENV_PY"
