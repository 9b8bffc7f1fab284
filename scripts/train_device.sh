#!/usr/bin/env bash
# Train PropMask and Box2Mask at once on one lent GPU, within one device command (< 9 min).
#   bash scripts/train_device.sh OUT_DIR [MINUTES]
# RUNS="name:recipe.json ..." picks other runs (at most 2) to put side by side, e.g. v2.1's recipe beside the 2.5D + mask-hint arm:
#   RUNS="propmask:lite_v2_propmask_gpu.json propmask_wide:lite_v2_propmask_context3_hint_gpu.json"
# Needs cache/train_pack.npz (`propsam pack-data --out cache/train_pack.npz`, carried to the device).
# Reads nothing else but the repository (shipped weights for the warm start) and needs no SimpleITK.
# Writes into OUT_DIR, every file < 16 MiB (the device tool's limit): box2mask.pt, propmask.pt split
# into propmask.pt.part00/01 when larger (join: cat propmask.pt.part* > propmask.pt), the two
# training logs (JSON lines with tasks/s) and summary.txt (the GPU and torch, the sampler's
# throughput alone, then steps, tasks/s and sha256 of the weights).
# Full checkpoints (with optimizer state, ~100 MB) stay in runs/ on the device machine.
# PACK, RUNS_DIR, PART_BYTES, PREFLIGHT and PYTHON are for the CPU test of this script
# (Testing/test_device_training.py), which runs it with tiny recipes in a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: train_device.sh OUT_DIR [MINUTES]}
MINUTES=${2:-7.5}
PYTHON=${PYTHON:-python3}
RECIPES=${RECIPES:-PropSAMSlicer/propsam/training/recipes}  # lite_v2_{propmask,box2mask}_gpu.json in there
RUNS=${RUNS:-"propmask:lite_v2_propmask_gpu.json box2mask:lite_v2_box2mask_gpu.json"}
PACK=${PACK:-cache/train_pack.npz}  # the recipes name it too; checked here to fail before any device time is spent
RUNS_DIR=${RUNS_DIR:-runs}
PART_BYTES=${PART_BYTES:-$((15 * 1024 * 1024))}  # under the device tool's 16 MiB per file
[ -f "$PACK" ] || { echo "$PACK is missing: run propsam pack-data and carry cache/" >&2; exit 2; }
# the device tool returns at most 8 files from OUT: per run its weight parts (2 for lite's PropMask, 3 for
# lite_deep's) and a log, plus summary.txt
N_RUNS=$(echo $RUNS | wc -w)
[ "$N_RUNS" -le 2 ] || { echo "RUNS names $N_RUNS runs: at most 2 fit the 8 files the device tool returns" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONPATH="$PWD/PropSAMSlicer${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
(nvidia-smi 2>&1; "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())") > "$OUT/summary.txt"
# pre-flight, about 20 s: the CUDA path of the sampler and synthesis, and their throughput alone;
# a failure here ends the call early and saves the device time
if [ "${PREFLIGHT:-1}" = 1 ]; then
  timeout 60 "$PYTHON" benchmarks/bench_device_sampler.py --skip-training >> "$OUT/summary.txt" 2>&1 \
    || { cat "$OUT/summary.txt"; echo "pre-flight failed: not training" >&2; exit 3; }
fi
GUARD=$("$PYTHON" -c "print(int(float('$MINUTES') * 60 + 60))")  # the run stops itself; this only guards a hang
pids=()
for RUN in $RUNS; do
  NAME=${RUN%%:*}
  timeout -s INT "$GUARD" "$PYTHON" -m propsam.training.cli train --config "$RECIPES/${RUN#*:}" \
    --out-dir "$RUNS_DIR/device_$NAME" --weights-dir "$RUNS_DIR/device_$NAME/export" --max-minutes "$MINUTES" \
    > "$OUT/$NAME.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for RUN in $RUNS; do
  NAME=${RUN%%:*}
  W=$(ls "$RUNS_DIR/device_$NAME"/export/*.pt 2>/dev/null | head -n 1)  # the network's kind names the file
  [ -n "$W" ] || { echo "$NAME: no weights written" >> "$OUT/summary.txt"; continue; }
  echo "$NAME.pt $(sha256sum "$W" | cut -d' ' -f1) $(stat -c %s "$W") bytes" >> "$OUT/summary.txt"
  if [ "$(stat -c %s "$W")" -gt "$PART_BYTES" ]; then
    split -b "$PART_BYTES" -d -a 2 "$W" "$OUT/$NAME.pt.part"
  else
    cp "$W" "$OUT/$NAME.pt"
  fi
  "$PYTHON" - "$OUT/$NAME.log" "$NAME" >> "$OUT/summary.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
steps = [r for r in rows if "tasks_per_s" in r]
if steps:
    rates = sorted(r["tasks_per_s"] for r in steps[1:] or steps)
    print(f"{sys.argv[2]}: steps {steps[-1]['step']}, tasks seen {steps[-1]['tasks_seen']}, tasks/s median {rates[len(rates) // 2]} "
          f"(max {rates[-1]}), data share median {sorted(r['data_share'] for r in steps)[len(steps) // 2]}, last mask loss {steps[-1]['mask']}")
PY
done
FILES=$(ls "$OUT" | wc -l)
[ "$FILES" -le 8 ] || echo "warning: $FILES files in $OUT, the device tool returns 8" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
ls -la "$OUT"
exit $status
