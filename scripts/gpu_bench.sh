#!/usr/bin/env bash
# On a GPU machine (no network), from the repo root, with .gpu/ staged by scripts/gpu_stage.sh:
# build llama-cpp-python with CUDA for this GPU (no llava/mtmd library: eft-local loads none),
# then run the issue-17 benchmarks of the 7b-0.5b shape (speed tables, per-phase profile,
# --parallel), logs under $OUT. A build that outlasts one call (10 min) leaves its log in
# $OUT/build.txt; `build` and `bench` then run as two calls while the machine stays warm.
#
#   bash scripts/gpu_bench.sh [all|build|bench]
#
# EFT_GPU_SHAPE (default 7b-0.5b) and PYTHON (default python3) exist for a smoke test on a CPU
# (EFT_GPU_SHAPE=pair-mini PYTHON=.venv/bin/python bash scripts/gpu_bench.sh bench).
set -uo pipefail
step=${1:-all}
stage=${EFT_GPU_STAGE:-.gpu}
shape=${EFT_GPU_SHAPE:-7b-0.5b}
py=${PYTHON:-python3}
out=${OUT:-/tmp/eft-gpu-out}
site=/tmp/eft-site
mkdir -p "$out" "$site"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
say() { echo "[$(date +%T)] $*" | tee -a "$out/steps.txt"; }

if [ "$step" != bench ] && ! "$py" -c "import llama_cpp" 2>/dev/null; then
    ls "$stage"/llama_cpp_python-*.tar.gz >/dev/null 2>&1 ||
        { echo "gpu_bench: no llama-cpp-python source in $stage/: run scripts/gpu_stage.sh here first and carry $stage"; exit 2; }
    command -v nvidia-smi >/dev/null || { echo "gpu_bench: no nvidia-smi: run this on the GPU machine"; exit 2; }
fi
if [ "$step" != bench ]; then
    if ls "$stage"/wheels/*.whl >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$stage"/wheels/*.whl || exit 1
    fi
    if ! "$py" -c "import llama_cpp" 2>/dev/null; then
        cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
        say "building llama-cpp-python with CUDA for sm_${cap} on $(nproc) cores"
        t0=$(date +%s)
        CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=ON -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${cap} -DLLAVA_BUILD=OFF" \
            CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            "$py" -m pip install --no-build-isolation --no-deps --no-cache-dir --target "$site" \
            "$stage"/llama_cpp_python-*.tar.gz >"$out/build.txt" 2>&1 || { tail -40 "$out/build.txt"; exit 1; }
        say "build took $(($(date +%s) - t0)) s"
    fi
fi
"$py" -c "import llama_cpp as l; print('llama-cpp-python', l.__version__, '| GPU offload:', l.llama_supports_gpu_offload())" |
    tee -a "$out/steps.txt" || exit 1
[ "$step" = build ] && exit 0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/gpu.txt"
models=/tmp/eft-bench-$shape
say "speed tables + profile ($shape, high agreement; writes the GGUFs first)"
"$py" scripts/bench.py --shape "$shape" --agreement high --repeat 2 --profile --no-numpy --out-dir "$models" --reuse-models \
    2>&1 | tee "$out/bench.txt"
say "--parallel 1,8,32 ($shape)"
"$py" scripts/bench.py --shape "$shape" --parallel 1,8,32 --prompts 32 --tokens 64 --repeat 1 --parallel-levels high \
    --out-dir "$models" --reuse-models 2>&1 | tee "$out/parallel.txt"
say "done"
