#!/usr/bin/env bash
# The engine on CUDA in one short, capped run (issue #15): the engine's identities on the device, then the
# node-budget benchmark on the Gemma-shaped model, built on the machine (nothing is carried but the checkout).
#
#   bash bench/gpu_check.sh                     # a GPU machine (the device tool: `run` with timeout_s 600)
#   ATLAS_DEVICE=cpu GPU_CHECK_SHAPE=gpt2-4l-d128 GPU_CHECK_LENGTHS="16 64" GPU_CHECK_THREADS=1 PYTHON=python \
#       bash bench/gpu_check.sh                # CPU dry run (PYTHON: the project venv's)
#
# Needs python3 with torch, transformers, safetensors, tokenizers, pyyaml, numpy (the GPU image has them; no
# pydantic, Neo4j or Redis: the scripts it runs import none of them). Every step has a timeout inside an overall
# cap (GPU_CHECK_CAP_S, default 480 s, so a 600 s call ends with time to spare and a 15-minute device budget
# leaves room to rerun once). Logs go to $OUT (the device tool's folder) or /tmp/atlas-gpu-check/logs.
#
# Steps:
#   1. environment: GPU, torch, CUDA
#   2. identities: bench/device_check.py (fp32 on the device = CPU, completeness, budgets, bf16 tolerances)
#   3. the benchmark model (bench/make_bench_model.py --shape $GPU_CHECK_SHAPE, 16 calibration prompts)
#   4. bench/engine_speed.py on the device: budgets 2048 then 8192 at $GPU_CHECK_LENGTHS (default 64 256 1024),
#      fp32, then bf16 at the first two lengths with budget 2048, each while time is left
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${ATLAS_DEVICE:-cuda}
SHAPE=${GPU_CHECK_SHAPE:-gpt2-18l-d640}
LENGTHS=${GPU_CHECK_LENGTHS:-"64 256 1024"}
CAP=${GPU_CHECK_CAP_S:-480}
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/atlas-gpu-check/logs}
WORK=${GPU_CHECK_WORK:-/tmp/atlas-gpu-check}
THREADS=${GPU_CHECK_THREADS:-$(nproc)}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS" "$WORK"
START=$(date +%s)
FAILED=0

left() { echo $((CAP - ($(date +%s) - START))); }

# step NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left), tees its output to $LOGS/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  ((limit > remaining)) && limit=$remaining
  if ((limit < 15)); then
    echo "== $name: skipped (the ${CAP}s cap is spent)" | tee -a "$LOGS/summary.log"
    return 1
  fi
  echo "== $name (up to ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | grep -v "Warning\|return torch.sparse\|Loading weights" | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0))s$( ((rc == 124)) && echo ' (timed out)')" | tee -a "$LOGS/summary.log"
  ((rc == 0)) || FAILED=1
  return "$rc"
}

echo "gpu_check: device $DEVICE, shape $SHAPE, lengths $LENGTHS, cap ${CAP}s, $(date -u +%FT%TZ)" | tee "$LOGS/summary.log"
step environment 60 "$PY" -c "
import torch, transformers, os
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'cpus', os.cpu_count())
print('gpus', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else 'none')
from workers.models.placement import Placement
print('placement', Placement('$DEVICE').torch_device())
" || { echo "gpu_check: device $DEVICE is not usable here"; exit 1; }

step identities 150 "$PY" bench/device_check.py --device "$DEVICE"

MODEL="$WORK/$SHAPE"
if [ ! -f "$MODEL/manifest.json" ]; then
  step build_model 150 "$PY" bench/make_bench_model.py --shape "$SHAPE" --out "$MODEL" --calib-prompts 16 \
    --threads "$THREADS" || { echo "gpu_check: no benchmark model"; exit 1; }
fi

for budget in 2048 8192; do
  # shellcheck disable=SC2086
  step "speed_fp32_b$budget" 400 "$PY" bench/engine_speed.py --bench "$MODEL" --device "$DEVICE" --dtype fp32 \
    --threads "$THREADS" --repeats 0 --max-feature-nodes "$budget" --lengths $LENGTHS
done
# shellcheck disable=SC2086
step speed_bf16_b2048 300 "$PY" bench/engine_speed.py --bench "$MODEL" --device "$DEVICE" --dtype bf16 \
  --threads "$THREADS" --repeats 0 --max-feature-nodes 2048 --lengths $(echo $LENGTHS | cut -d' ' -f1-2)

echo "gpu_check: done in $(($(date +%s) - START))s, $( ((FAILED)) && echo 'SOME STEPS FAILED OR TIMED OUT' || echo 'every step passed'); logs in $LOGS" | tee -a "$LOGS/summary.log"
exit "$FAILED"
