#!/usr/bin/env bash
# Stage what scripts/gpu_bench.sh needs on a GPU machine that has no network (issue 17 §4):
# the llama-cpp-python source to build with CUDA there, and the wheels its image lacks.
# Writes .gpu/ (listed in .git/info/exclude, so it travels only when a device call carries it).
#
#   scripts/gpu_stage.sh PATH/TO/llama_cpp_python-0.3.36-slim.tar.gz
#
# Then one device call (the `device` tool's run), carrying .gpu:
#   bash scripts/gpu_bench.sh            # build (~minutes, timed), then the 7b-0.5b benchmark
set -euo pipefail
sdist=${1:?usage: scripts/gpu_stage.sh LLAMA_CPP_PYTHON_SDIST.tar.gz}
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
cp "$sdist" .gpu/
# The GPU image's python is 3.12 with numpy, jinja2, pyyaml, tqdm, requests; these are missing.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .gpu/wheels gguf==0.19.0 diskcache==5.6.3
du -sh .gpu
