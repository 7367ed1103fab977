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
# Checks, most wanted first, each under its own time limit so that one failure leaves the rest:
#   1. train_memory  torch.cuda.max_memory_allocated of a ViT-B/512 stage-two step, batch 16 (paper: 736 MB)
#   2. sweep_bench   one trial vs 16 packed on the default demo (issue 7's < 4x), an 8-trial sweep on
#                    dask GPU workers (resources GPU=1) and their peak memory
#   3. extraction    fpt extract's loop vs bare timm forward_features at ViT-B/512 on the GPU
#   4. precision     extract.precision bf16 and fp16 vs fp32 at ViT-B/512: speed and selected tokens changed
#   5. tests         the training tests with train.device auto = cuda (stacked packs, resume, end to end)
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

check() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - began)) s (limit $limit s); last lines:"
    tail -n 25 "$LOGS/$name.log"
}

if [ "$SMOKE" = 1 ]; then
    check train_memory 300 $PY bench/train_memory.py --quick
    check sweep_bench 600 $PY bench/sweep_bench.py --repeats 1 --packed 4 --sweep-trials 2
    check extraction 300 $PY bench/extraction.py --quick --scenario demo --pairs 1
    check precision 300 $PY bench/extract_precision.py --quick --scenario demo
    check tests 600 $PY -m pytest -q -x tests/test_train_resume.py
else
    check train_memory 60 $PY bench/train_memory.py --device cuda
    check sweep_bench 200 $PY bench/sweep_bench.py --default-demo --repeats 3
    check extraction 90 $PY bench/extraction.py --device cuda --scenario vitb512 --num-images 128 --batch-size 16
    check precision 80 $PY bench/extract_precision.py --device cuda --scenario vitb512 --num-images 64 \
        --batch-size 16 --precisions bf16 fp16 --rounds 2
    check tests 80 $PY -m pytest -q -x tests/test_sweep_packed.py tests/test_train_resume.py tests/test_end_to_end.py
fi

cp bench/results/*.json "$LOGS"/ 2>/dev/null
tar -czf "$OUT/device_results.tar.gz" -C "$LOGS" .
echo "wrote $OUT/device_results.tar.gz"
