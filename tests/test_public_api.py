"""The library API the README shows works as written (on a synthetic family)."""

from __future__ import annotations

import re
import subprocess
import sys

import eft_local
from tests.conftest import ROOT


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### As a library") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(family, tmp_path):
    code = readme_example()
    for role, path in family.paths().items():
        code = code.replace(f'"{role}.gguf"', repr(str(path)))
    code = code.replace("n_ctx=2048", "n_ctx=256, n_threads=1")
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip()) > 0  # the answer was streamed


def test_import_is_cheap_and_names_are_lazy():
    code = "import sys, eft_local; print('numpy' in sys.modules, 'llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert out == ["False", "False"]
    assert set(eft_local.__all__) >= {"EftEngine", "GenerationConfig", "SamplingParams", "Session"}
    assert eft_local.SamplingParams().temperature == eft_local.GenerationConfig().sampling.temperature
