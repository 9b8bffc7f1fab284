#!/usr/bin/env bash
# The test suite (README's second command calls this after setup).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest Testing -q -p no:cacheprovider "$@"
