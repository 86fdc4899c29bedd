"""Seeded output holds bit-identical: scripts/seeded_outputs.py --check against the stored
fingerprint (greedy and sampled, every filter, naive / k = 4 / adaptive, lone and --parallel 4).

The fingerprint changes only with a version that says so in CHANGELOG.md (0.2.0 did once:
naive rounds draw from p directly, drafts from the drafter's head)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_seeded_outputs_match_the_stored_fingerprint(tmp_path):
    script, stored = ROOT / "scripts" / "seeded_outputs.py", ROOT / "scripts" / "seeded_outputs.txt"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--check", str(stored)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(run.stdout.splitlines()) == len(stored.read_text().splitlines()) == 30


def test_a_changed_line_is_named(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from seeded_outputs import compare

    assert compare(["a", "b"], ["a", "b"]) == 0
    assert compare(["a", "c"], ["a", "b"]) == 1
    assert compare(["a"], ["a", "b"]) == 1
