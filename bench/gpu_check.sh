#!/usr/bin/env bash
# On a machine with a CUDA GPU and a CUDA build of PyTorch: the GPU tests, then record
# overhead of fine-tuning on the GPU. Results go to $OUT (default bench/results).
#     OUT=/tmp/gpu bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
git --version
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py "tests/test_record.py::test_cuda_tensors_are_frozen_at_the_call_without_waiting_for_the_gpu" 2>&1 | tee "$OUT/gpu-tests.log"
timeout 200 $PY bench/bench_record.py --pairs ${PAIRS:-3} --workloads finetune-gpu --out "$OUT/record-gpu" 2>&1 | tee "$OUT/record-gpu.log"
