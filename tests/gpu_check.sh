#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a GPU: the backward against autograd under CUDA autocast and compile,
# the epoch and Fashion-MNIST benchmarks on the GPU, and short training runs (see docs/devices.md and docs/benchmarks.md).
# Usage: bash tests/gpu_check.sh OUT_DIR      (Hydra from .whl/ when it is not installed)
set -uo pipefail
out=${1:?out dir}
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
trainer=${TRAINER:-gpu}   # TRAINER=cpu EXTRA=debug=fast: a dry run of the training part on a CPU
# the pictures need matplotlib: where it is missing, train without them
python3 -c "import matplotlib" 2>/dev/null || EXTRA="${EXTRA:-} callbacks.pictures=null"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv"
  PYTHONPATH=benchmarks python3 tests/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
  # an epoch three ways (samples/s) and Fashion-MNIST's time to 89%, on the GPU
  # (Fashion-MNIST's four .gz files in FASHION_DIR, default .fashion/: copy them there first on a machine without network)
  python3 benchmarks/bench.py --device cuda --only epoch,fashion --fashion-dir "${FASHION_DIR:-.fashion}" \
      --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.log"
fi
summary="$out/runs.jsonl"; : > "$summary"
for run in "bf16 trainer.precision=bf16-mixed" "fp16 trainer.precision=16-mixed" "compile model.compile=true" \
           "fp32 trainer.precision=32-true" "ddp1 trainer.strategy=ddp trainer.devices=1" \
           "nielsen_chunked experiment=nielsen_ch1 trainer.max_epochs=3" \
           "nielsen_unchunked experiment=nielsen_ch1 trainer.max_epochs=3 model.chunk=1"; do
  # (the nielsen pair: batch 10 on the GPU in chunks of optimiser steps and one step per
  #  Lightning step -- fit time apart, the same metrics)
  set -- $run; name=$1; shift
  start=$(date +%s.%N)
  python3 train.py trainer=$trainer ${EXTRA:-} "$@" callbacks.gradient_audit.every_n_steps=10 callbacks.progress_bar=null \
      trainer.enable_progress_bar=false hydra.run.dir=/tmp/gpu-$name > "/tmp/gpu-$name.log" 2>&1
  rc=$?
  python3 - "$name" "$rc" "$start" >> "$summary" <<'PY'
import json, sys, time
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
name, rc, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
row = {"run": name, "rc": rc, "wall_s": time.time() - start}
try:
    row["metrics"] = json.load(open(f"/tmp/gpu-{name}/metrics.json"))
    ea = EventAccumulator(f"/tmp/gpu-{name}/tensorboard"); ea.Reload()
    row["audit_max"] = {t: max(e.value for e in ea.Scalars(t)) for t in ea.Tags()["scalars"] if t.startswith("audit/")}
except Exception as e:
    row["error"] = repr(e); row["log_tail"] = open(f"/tmp/gpu-{name}.log").read()[-3000:]
print(json.dumps(row))
PY
done
cat "$summary"
