"""``build --quick`` end to end (slow): deterministic from the seed, and the paper's ordering
on facts only the large base saw, measured through ``eft-local run``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FILES = ("small-base.gguf", "large-base.gguf", "small-chat.gguf", "small-chat-2.gguf", "world.jsonl")


def _build(out: Path, *flags: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "miniature.py"), "build", "--quick", "--seed", "0", "--out", str(out), *flags],
        check=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    _build(out)
    return out


def test_quick_build_writes_the_family_and_its_hashes(quick):
    manifest = json.loads((quick / "manifest.json").read_text())
    assert manifest["quick"] and set(manifest["sha256"]) == set(FILES)
    for name in FILES:
        assert (quick / name).stat().st_size > 0, name
    assert len({manifest["sha256"][f] for f in FILES}) == len(FILES)  # four different models


def test_quick_rebuild_is_byte_identical(quick, tmp_path):
    """A second build from the same seed repeats the first stage byte for byte: the world,
    the tokenizer, the batches, the initialisation, the training loop with its probe-based
    stop, and the GGUF export (the later stages run the same code on other data; ``build
    --check`` compares the whole shipped family)."""
    _build(tmp_path, "--stages", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small-base.gguf", "world.jsonl"]
    for name in ("small-base.gguf", "world.jsonl"):
        assert (tmp_path / name).read_bytes() == (quick / name).read_bytes(), name


def _exact_by_mix(quick: Path, tmp: Path, rows: list[dict]) -> dict[tuple[float, float], float]:
    """Share of greedy replies equal to ``answer``, per (alpha, beta), from one ``eft-local run --grid``."""
    prompts = tmp / "q.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": r["question"]}) + "\n" for i, r in enumerate(rows)))
    out = tmp / "out.jsonl"
    cmd = [sys.executable, "-m", "eft_local", "run", "--prompt-file", str(prompts), "--output", str(out)]
    cmd += ["--base", str(quick / "large-base.gguf"), "--chat", str(quick / "small-chat.gguf")]
    cmd += ["--reference", str(quick / "small-base.gguf"), "--grid", "alpha=0,1", "--grid", "beta=0,1"]
    cmd += ["--temperature", "0", "--max-tokens", "32", "--n-ctx", "256"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    hits: dict[tuple[float, float], list[bool]] = defaultdict(list)
    for line in out.read_text().splitlines():
        g = json.loads(line)
        hits[(g["alpha"], g["beta"])].append(g["text"] == rows[g["id"]]["answer"])
    assert all(len(h) == len(rows) for h in hits.values()) and len(hits) == 4
    return {k: sum(h) / len(h) for k, h in hits.items()}


def test_eft_beats_both_single_models_on_large_only_facts(quick, tmp_path):
    rows = [json.loads(line) for line in (quick / "world.jsonl").read_text().splitlines()]
    large_only = [r for r in rows if r["seen_by"] == ["large-base"]][:80]
    exact = _exact_by_mix(quick, tmp_path, large_only)
    eft, chat, base = exact[(1.0, 1.0)], exact[(1.0, 0.0)], exact[(0.0, 1.0)]
    # measured: seed 0, these 80 questions: EFT 84 %, small-chat alone 0 %, large-base alone 0 %;
    # all 288 large-only facts, seeds 0-2: EFT 80-89 %, either model alone <= 3 %
    assert eft >= 0.6 and chat <= 0.3 and base <= 0.3, (eft, chat, base)
    assert eft > max(chat, base) + 0.3, (eft, chat, base)
