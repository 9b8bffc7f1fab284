#!/usr/bin/env bash
# Segment the bundled sample (a generated CT-like phantom with a preset box on its largest
# slice) with the shipped lite model; writes the mask, a PNG preview and a timing line to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/python -m propsam.demo --out-dir out
