"""Seeded output holds bit-identical: scripts/seeded_outputs.py --check against the stored
fingerprint (greedy and sampled, every filter, naive / k = 4 / adaptive, lone and --parallel 4).

The fingerprint changes only with a version that says so in CHANGELOG.md (0.2.0 did once:
naive rounds draw from p directly, drafts from the drafter's head). Fingerprints are a function
of the llama.cpp binary too: a build with other CPU flags rounds the models' logits differently,
so the check runs on the build they were recorded with (scripts/seeded_outputs.build: the
sha256 of llama-cpp-python's shared libraries; the portable wheel `.ci/run` installs) and says
why it skips on any other."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def llama_build_id() -> str:
    """sha256 over llama-cpp-python's shared libraries (names and bytes)."""
    import llama_cpp

    digest = hashlib.sha256()
    for lib in sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so")):
        digest.update(lib.name.encode() + lib.read_bytes())
    return digest.hexdigest()


def test_seeded_outputs_match_the_stored_fingerprint(tmp_path):
    recorded = (ROOT / "scripts" / "seeded_outputs.build").read_text().split()[0]
    if llama_build_id() != recorded:
        pytest.skip("fingerprints were recorded with another llama.cpp build (scripts/seeded_outputs.build)")
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
