#!/usr/bin/env bash
# One prepared run on a GPU machine: the CUDA tests, the 7B-shaped GPU export benchmark, and the export
# benchmark on 4 and on all CPU cores (a random-init SmolLM2-shaped model). Logs go to $1 (default /tmp/gpu-check).
# Needs llm2nifti's dependencies importable. On this workplace's GPU image (Python 3.12, torch, transformers,
# accelerate, scipy, scikit-learn, pandas there already) carry the missing ones as wheels, fetched beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl nibabel nilearn isal gguf \
#     dask distributed partd locket tblib zict tornado
# and start the device command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -u
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
work=${GPU_CHECK_WORK:-$PWD/.bench}  # on the machine's disk: a tmpfs /tmp would flatter the writer
mkdir -p "$work"
py=${PYTHON:-python3}
step() { echo "== $1 ($(date +%T))"; }
status=0

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc; df -h /tmp "$work" | tail -n +2
$py -c "import sys, torch, transformers, numpy, nibabel, nilearn, isal; print(sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"

step "CUDA tests"
timeout 180 $py -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_big_models.py tests/test_masking.py \
    tests/test_models.py tests/test_export.py tests/test_mask_eval.py tests/test_metrics.py tests/test_sites.py \
    tests/test_sharded_export.py \
    >"$out/tests.log" 2>&1 || status=1
tail -n 15 "$out/tests.log"

step "7B-shaped Llama, bfloat16, mlp.hidden, on the GPU"
timeout 200 $py benchmarks/gpu_export.py --runs ${GPU_RUNS:-8} --out-dir "$work" 2>&1 | tee "$out/gpu_export.log" \
    || status=1

step "export/trunk on CPU cores (random-init SmolLM2 shapes)"
$py benchmarks/random_model.py --shape smollm2-135m --out "$work/smollm2-random" || status=1
for cores in 4 all; do
    pin=""; [ "$cores" = all ] || pin="taskset -c 0-$((cores - 1))"
    TMPDIR="$work" timeout 120 $pin $py benchmarks/export_throughput.py --model "$work/smollm2-random" \
        --sites mlp.out,mlp.hidden --growth-runs 0 2>&1 | tee "$out/cpu_export_$cores.log" || status=1
done
rm -rf "$work"
exit $status
