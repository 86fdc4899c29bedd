"""``scripts/bench.py --shape miniature``: the speed rows on the shipped family."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a process that loads three models (~2 s CPU)
ROOT = Path(__file__).resolve().parents[2]


def test_bench_miniature_rows():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--shape", "miniature", "--prompts", "2", "--repeat", "1"]
    out = subprocess.run(cmd + ["--temperature", "0,1"], check=True, capture_output=True, text=True, timeout=300).stdout
    assert "shape miniature (the shipped family" in out and "2 large-only questions" in out
    greedy, sampled = out.split("-- greedy (T=0)")[1].split("-- sampled (T=1")
    rows = {line.split("  ")[0]: line for line in greedy.splitlines() if line.startswith(("naive", "spec", "small-chat"))}
    assert set(rows) == {"naive EFT", "spec k=2", "spec k=4", "spec k=8", "spec adaptive", "small-chat alone"}
    for mode in ("spec k=2", "spec k=4", "spec k=8", "spec adaptive"):
        assert rows[mode].endswith("yes"), rows[mode]  # greedy speculative = naive, token for token
        assert "%" in rows[mode]  # an acceptance was measured
    assert "naive EFT" in sampled and "spec adaptive" in sampled
