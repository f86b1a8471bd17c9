#!/usr/bin/env bash
# The accelerator check in one call: every benchmark at the paper's sizes, then the authors'
# PyTorch step on the same device, all JSON lines into $OUT/results.jsonl.
#
#   OUT=/tmp/acc bash benchmarks/accelerator_check.sh           # on the GPU machine
#   OUT=/tmp/acc TINY=1 bash benchmarks/accelerator_check.sh    # CPU rehearsal, tiny sizes
#   OUT=/tmp/acc ONLY=loops bash benchmarks/accelerator_check.sh  # the step's loop forms alone
#
# ONLY=loops (issue #22) measures the forms of the step's loops against each other, most
# important first: whether every rectangles-loop form gives the 'while' outputs on this device
# (rectangle_loops.py, also timed with XLA command buffers for WHILE/CONDITIONAL), then the
# stage-2 step with the rectangles loop as 'fixed', 'while' and 'two_phase' (memory rounds
# bounded in all), with a profile each (`d2h_copies_per_step`, `device_busy_fraction`), the
# memory updates alone, the same with command buffers, then stage 1. The baseline before the change: the H200 lines of
# results/h200_2026-11-29.jsonl (stage 2 77.0 ms, busy 73%, ~420 device-to-host copies).
#
# Environment: PYTHON (default python3), BUDGET_S (default 500: parts that would not finish
# inside it are skipped, most important first), REF_MBCCM (the authors' code, default
# .ref/mbccm), REF_STEP (gpubench's ref_step.py, default .ref/ref_step.py), WHEELS (a folder of
# wheels to install first when ml_collections is missing, default .whl).
# Each part runs in its own process under `timeout`, so one failure or hang costs only itself;
# the parts' stderr goes to $OUT/logs.txt, the stage-2 trace to $OUT/trace_stage2.json.gz, and
# a summary is printed last (the device tool returns at most 8 files, hence so few).
set -u
OUT=${OUT:?set OUT to the folder that receives the results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-500}
REF_MBCCM=${REF_MBCCM:-.ref/mbccm}
REF_STEP=${REF_STEP:-.ref/ref_step.py}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
START=$(date +%s)
SUMMARY=()
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

if ! $PY -c 'import ml_collections' 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

if [ -n "${TINY:-}" ]; then
  NET=(--width 8 --block basic --stage-sizes 1 1 1 1 --image-size 32 16)
  RECT_SIZES=(--batch 8 --image-size 32 16 --calls 2 --repeats 2)
  STEP_SIZES=(--clusters 4 --instances 2 --num-images 64 --memory-clusters 8 8 --steps 5)
  EXTRACT_SIZES=(--num-images 512 --repeats 2)
  EPOCH_SIZES=(--clusters 4 --instances 2 --num-visible 512 --num-infrared 256 --identities 16
               --cluster-noise 1.0 --steps 5)
  CLUSTER_SIZES=(--sizes 2000 --dim 64)
  MEMORY_SIZES=(--clusters 4 --instances 2 --dim 64 --repeats 2 --calls 5)
  REF_ENV=SKIP
else
  NET=()
  RECT_SIZES=()
  STEP_SIZES=()
  EXTRACT_SIZES=()
  EPOCH_SIZES=()
  CLUSTER_SIZES=(--sizes 22000)
  MEMORY_SIZES=()
  REF_ENV=
fi

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || echo "nvidia-smi: none"
  nproc
  $PY - <<'EOF'
import importlib, json, platform
versions = {'python': platform.python_version()}
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy', 'scipy', 'sklearn',
             'numba', 'ml_collections', 'torch'):
  try:
    versions[name] = importlib.import_module(name).__version__
  except Exception as e:  # noqa: BLE001 - a missing package is a fact to report
    versions[name] = f'missing: {type(e).__name__}'
try:
  import jax
  versions['jax_devices'] = [str(d) for d in jax.devices()]
  versions['backend'] = jax.default_backend()
  import jax.extend
  versions['platform_version'] = jax.extend.backend.get_backend().platform_version
except Exception as e:  # noqa: BLE001
  versions['jax_error'] = repr(e)
print(json.dumps({'what': 'env', **versions}))
EOF
} 2>&1 | tee "$OUT/env.txt"
LOGS=$OUT/logs.txt

# part NAME SECONDS_NEEDED TIMEOUT COMMAND...: run unless the budget left is below SECONDS_NEEDED.
part() {
  local name=$1 need=$2 limit=$3; shift 3
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < need )); then
    echo "== $name: skipped ($left s of the budget left, needs about $need)"
    SUMMARY+=("$name: skipped, budget")
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit $limit s, $left s of the budget left)"
  local t0=$(date +%s)
  echo "== $name: $*" >> "$LOGS"
  timeout --kill-after=10 "$limit" "$@" > >(tee -a "$RESULTS") 2> "$OUT/part.log"
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  cat "$OUT/part.log" >> "$LOGS"
  [ $rc -ne 0 ] && tail -n 15 "$OUT/part.log"
  rm -f "$OUT/part.log"
  SUMMARY+=("$name: rc $rc, $took s")
}

# loop_step NAME STAGE LOOP COMMAND_BUFFER [more train_step.py flags]: one train_step.py
# variant, images on the device, bf16, a profile of one repeat.
loop_step() {
  local name=$1 stage=$2 loop=$3 buffer=$4; shift 4
  part "$name" 50 150 $PY benchmarks/train_step.py --dtype auto --stage $stage --images device \
    --repeats 3 --linear-transform-loop $loop --xla-command-buffer "$buffer" \
    --profile /tmp/trace_loops "$@" "${NET[@]}" "${STEP_SIZES[@]}"
}
CMDBUF=+WHILE,+CONDITIONAL

if [ "${ONLY:-}" = loops ]; then
  part rectangle_loops 30 90 $PY benchmarks/rectangle_loops.py "${RECT_SIZES[@]}"
  loop_step stage2_fixed 2 fixed ''
  loop_step stage2_while 2 while ''
  loop_step stage2_two_phase 2 two_phase ''
  part memory_update 20 60 $PY benchmarks/memory_update.py "${MEMORY_SIZES[@]}"
  part rectangle_loops_cmdbuf 30 90 $PY benchmarks/rectangle_loops.py \
    --xla-command-buffer $CMDBUF "${RECT_SIZES[@]}"
  loop_step stage2_while_cmdbuf 2 while $CMDBUF
  loop_step stage2_fixed_cmdbuf 2 fixed $CMDBUF
  loop_step stage1_fixed 1 fixed ''
  loop_step stage1_two_phase 1 two_phase ''
  loop_step stage1_while 1 while ''
else

part train_step_bf16 60 170 $PY benchmarks/train_step.py --dtype auto --stage 1 2 \
  --images device --repeats 3 --profile /tmp/trace_step "${NET[@]}" "${STEP_SIZES[@]}"
TRACE=$(ls -t $(find /tmp/trace_step -path '*stage2*' -name '*.trace.json.gz' 2>/dev/null) \
        2>/dev/null | head -n 1)
[ -n "$TRACE" ] && cp "$TRACE" "$OUT/trace_stage2.json.gz"
part memory_update 20 60 $PY benchmarks/memory_update.py "${MEMORY_SIZES[@]}"
if [ -z "$REF_ENV" ]; then
  part reference 40 120 env REF_MBCCM="$REF_MBCCM" STEPS=20 $PY "$REF_STEP"
fi
part extract 30 90 $PY benchmarks/extract.py "${NET[@]}" "${EXTRACT_SIZES[@]}"
part epoch 60 170 $PY benchmarks/epoch.py "${NET[@]}" "${EPOCH_SIZES[@]}"
part clustering 20 60 $PY benchmarks/clustering.py "${CLUSTER_SIZES[@]}"
part train_step_host_fed 60 150 $PY benchmarks/train_step.py --dtype auto --stage 1 2 \
  --images host --repeats 3 "${NET[@]}" "${STEP_SIZES[@]}"
part train_step_f32 50 150 $PY benchmarks/train_step.py --dtype float32 --stage 1 2 \
  --images device --repeats 3 "${NET[@]}" "${STEP_SIZES[@]}"
fi

echo "== summary ($(( $(date +%s) - START )) s)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
$PY - "$RESULTS" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
  try:
    r = json.loads(line)
  except ValueError:
    print(line.rstrip())  # clustering.py's table
    continue
  if r.get('what', '').startswith('epoch'):
    print(r)
    continue
  keep = {k: r[k] for k in ('median_ms', 'ms_per_step', 'ms_per_call', 'seconds', 'images_per_s',
                             'dispatch_ms', 'device_peak_mb', 'step_peak_estimate_mb', 'total',
                             'precision', 'device_busy_fraction', 'd2h_copies_per_step',
                             'linear_transform_loop', 'xla_command_buffer', 'label_repeats',
                             'unknown_trip_count_loops', 'conditionals', 'equal_to_while',
                             'rectangles_max') if k in r}
  print(r.get('what'), keep)
EOF
