#!/usr/bin/env bash
# The GPU figures a CPU-only machine cannot measure, in one call of the workplace's device tool
# (a GPU machine lent to some tasks, 15 minutes of device time in all, one command at most 10 min).
#
# Prepare here, once (the device machine has torch, timm, numpy, rich, typer... but not zarr, dask
# or pydantic, and reaches no registry; /.whl/ is in .gitignore):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform manylinux1_x86_64 -d .whl -r bench/device_wheels.txt
#
# then call the device tool's run with: command "bash bench/device_checks.sh", carry [".whl"],
# timeout_s 540. Everything it measures comes back as $OUT/device_results.tar.gz (bench/results/*.json
# and one log per check) and the key lines are printed. On this CPU machine,
# `FPT_DEVICE_CHECKS_SMOKE=1 bash bench/device_checks.sh` runs the same steps at tiny sizes on the CPU.
#
# Checks, most wanted first, each under its own time limit so that one failure leaves the rest, and
# all within FPT_DEVICE_CHECKS_BUDGET seconds (default 520: a check gets what is left if that is less
# than its limit, and is skipped below 20 s):
#   1. train_device  train-side at ViT-B/512, batch 16, on a synthetic store: peak
#                    torch.cuda.max_memory_allocated (target <= 300 MB streaming) and epoch time, fp32
#                    against bf16 (train.precision), streaming against resident (train.resident: device,
#                    where the settings have it; else "resident: not available")
#   2. train_memory  the bare stage-two step's peak at ViT-B/512, batch 16 (paper: 736 MB)
#   3. pack          one trial vs 16 packed on the default demo (sweep_bench.py --skip-sweeps)
#   4. extraction    fpt extract's loop at extract.precision bf16 vs the bare timm forward_features (bf16
#                    and fp32) at ViT-B/512, in alternating pairs: img/s and the ratio
#   5. precision     extract.precision bf16 and fp16 vs fp32 at ViT-B/512: speed and selected tokens changed
#   6. tests         the training tests with a GPU present (train precision, stacked packs, resume)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/bench/results/device}
mkdir -p "$OUT" bench/results
LOGS=$(mktemp -d)
SMOKE=${FPT_DEVICE_CHECKS_SMOKE:-0}
PY=python3

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "$SMOKE" != 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
# fpt without installing it (no registry there): the checkout's root is the package `fpt`, so a
# folder holding a link named fpt to it puts it on the path, shipped pipeline.yaml included
FPT_PATH=$(mktemp -d)
ln -s "$REPO" "$FPT_PATH/fpt"
export PYTHONPATH=$FPT_PATH${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    nproc
    $PY - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("timm", "zarr", "numcodecs", "dask", "distributed", "pydantic", "numpy", "typer"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # report, do not stop: the checks say what they miss
        print(name, "MISSING", error)
EOF
} 2>&1 | tee "$LOGS/environment.log"

if [ "$SMOKE" = 1 ]; then BUDGET=${FPT_DEVICE_CHECKS_BUDGET:-3600}; else BUDGET=${FPT_DEVICE_CHECKS_BUDGET:-520}; fi

check() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 20 ]; then
        echo "== $name: skipped, $left s of the $BUDGET s budget left"
        return
    fi
    local began=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - began)) s (limit $limit s); last lines:"
    tail -n 25 "$LOGS/$name.log"
}

if [ "$SMOKE" = 1 ]; then
    check train_device 300 $PY bench/train_device.py --quick --device cpu
    check train_memory 300 $PY bench/train_memory.py --quick
    check pack 600 $PY bench/sweep_bench.py --repeats 1 --packed 4 --skip-sweeps
    check extraction 300 $PY bench/extraction.py --quick --scenario demo --pairs 1 --precision bf16
    check precision 300 $PY bench/extract_precision.py --quick --scenario demo
    check tests 600 $PY -m pytest -q -x tests/test_train_precision.py
else
    check train_device 120 $PY bench/train_device.py --device cuda
    check train_memory 35 $PY bench/train_memory.py --device cuda
    check pack 130 $PY bench/sweep_bench.py --default-demo --repeats 2 --skip-sweeps
    check extraction 90 $PY bench/extraction.py --device cuda --scenario vitb512 --num-images 128 --batch-size 16 \
        --pairs 2 --precision bf16
    check precision 55 $PY bench/extract_precision.py --device cuda --scenario vitb512 --num-images 64 \
        --batch-size 16 --precisions bf16 fp16 --rounds 2
    check tests 60 $PY -m pytest -q -x tests/test_train_precision.py tests/test_sweep_packed.py tests/test_train_resume.py
fi

cp bench/results/*.json "$LOGS"/ 2>/dev/null
tar -czf "$OUT/device_results.tar.gz" -C "$LOGS" .
echo "wrote $OUT/device_results.tar.gz"
