"""``build --quick`` end to end (slow): byte-identical from the seed, and the paper's ordering
on facts only the large base saw, measured through ``eft-local run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FILES = ("small-base.gguf", "large-base.gguf", "small-chat.gguf", "small-chat-2.gguf", "world.jsonl")


def _build(out: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "miniature.py"), "build", "--quick", "--seed", "0", "--out", str(out)],
        check=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    _build(out)
    return out


def test_quick_build_is_byte_identical(quick, tmp_path):
    _build(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (quick / name).read_bytes(), name
    manifest = json.loads((quick / "manifest.json").read_text())
    assert manifest["sha256"] == json.loads((tmp_path / "manifest.json").read_text())["sha256"]


def _exact(quick: Path, tmp: Path, alpha: float, beta: float, rows: list[dict]) -> float:
    prompts = tmp / "q.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": r["question"]}) + "\n" for i, r in enumerate(rows)))
    out = tmp / f"out-{alpha}-{beta}.jsonl"
    cmd = [sys.executable, "-m", "eft_local", "run", "--prompt-file", str(prompts), "--output", str(out)]
    cmd += [
        "--base",
        str(quick / "large-base.gguf"),
        "--chat",
        str(quick / "small-chat.gguf"),
        "--reference",
        str(quick / "small-base.gguf"),
    ]
    cmd += ["--alpha", str(alpha), "--beta", str(beta), "--temperature", "0", "--max-tokens", "32", "--n-ctx", "256"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    return sum(g["text"] == rows[g["id"]]["answer"] for g in got) / len(rows)


def test_eft_beats_both_single_models_on_large_only_facts(quick, tmp_path):
    rows = [json.loads(line) for line in (quick / "world.jsonl").read_text().splitlines()]
    large_only = [r for r in rows if r["seen_by"] == ["large-base"]][:80]
    eft = _exact(quick, tmp_path, 1.0, 1.0, large_only)
    chat = _exact(quick, tmp_path, 1.0, 0.0, large_only)
    base = _exact(quick, tmp_path, 0.0, 1.0, large_only)
    assert eft > max(chat, base) + 0.2, (eft, chat, base)
