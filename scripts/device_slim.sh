#!/usr/bin/env bash
# Make the checkout small enough for a device call that trains, and say what will travel.
#   bash scripts/device_slim.sh [--dry-run]
# The device tool sends the tracked files present in the checkout plus the carried paths, at most
# 64 MiB. The tracked weights (v2.1 and v1, ~54 MiB) and the training pack (cache/, ~22 MiB) do not
# fit together, and a device training run needs only the shipped model (its warm start). So this
# removes v1's weights from the checkout; git restores them after the call:
#   git checkout -- PropSAMSlicer/Resources/Models/lite_v1
# --dry-run removes nothing and only checks that the slimmed tree plus cache/ would fit.
set -euo pipefail
cd "$(dirname "$0")/.."
V1=PropSAMSlicer/Resources/Models/lite_v1
LIMIT=$((64 * 1024 * 1024))
[ "${1:-}" = "--dry-run" ] || [ -z "${1:-}" ] || { echo "usage: device_slim.sh [--dry-run]" >&2; exit 2; }
# bytes of the tracked files that are present, outside v1's folder, plus the carried cache/
tracked=$(git ls-files -z | grep -zv "^$V1/" | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
if [ -d cache ]; then
  cache=$(find cache -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
else
  cache=$((24 * 1024 * 1024))  # not built here (a fresh clone): the pack as built is 21.7 MiB (23.2 with freesurfer_t1)
fi
total=$((tracked + untracked + cache))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "travels: tracked without v1 $(mib $tracked), untracked $(mib $untracked), cache/ $(mib $cache): $(mib $total) of 64 MiB"
[ "$total" -le "$LIMIT" ] || { echo "over the device tool's 64 MiB: nothing removed" >&2; exit 1; }
if [ "${1:-}" != "--dry-run" ]; then
  rm -f "$V1"/*.pt
  echo "removed $V1/*.pt from the checkout; after the call: git checkout -- $V1"
fi
