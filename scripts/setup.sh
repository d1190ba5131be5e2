#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with the project and its
# test dependencies. Idempotent: a second run only checks that the environment is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import amaranth, onnx, onnxruntime, numpy, pytest, hypothesis, click, cocotb" \
        || { echo "setup: the installation is incomplete" >&2; exit 1; }
    rm -f .venv/.installed-*
    touch "$stamp"
fi
