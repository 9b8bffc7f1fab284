#!/usr/bin/env bash
# Create .venv with the pinned dependencies and the propsam package (editable, so the shipped
# model under PropSAMSlicer/Resources/Models is found). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 is the CPU wheel on this project's machines; for CUDA see README.
.venv/bin/python -m pip install --quiet -e ".[test]"
