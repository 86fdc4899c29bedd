"""Greedy drafts on a vocabulary with masked (padding) ids never propose a masked id, and the
output is what naive EFT (no drafts) gives with the same mask."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from eft_local.engine.config import GenerationConfig
from eft_local.mix.params import SamplingParams


def run(engine, draft_tokens):
    cfg = GenerationConfig(SamplingParams(alpha=1.0, beta=1.0, temperature=0.0), max_tokens=40, draft_tokens=draft_tokens)
    fin = list(engine.generate(engine.prompt(raw="hello world"), cfg, np.random.default_rng(0)))[-1]
    return fin


@pytest.mark.parametrize("draft_tokens", [4, None])
def test_greedy_drafts_with_masked_ids_match_naive_and_avoid_the_mask(engine, monkeypatch, draft_tokens):
    free = run(engine, draft_tokens).token_ids
    masked = np.array(sorted(set(free[1:6:2])), dtype=np.int64)  # ids the drafter does pick greedily
    monkeypatch.setattr(engine, "vocab", replace(engine.vocab, masked=masked))
    fin = run(engine, draft_tokens)
    assert fin.token_ids == run(engine, 0).token_ids
    assert fin.token_ids != free and not set(fin.token_ids) & set(masked.tolist())
    assert fin.stats.drafted > 0 and fin.stats.accepted > 0  # the drafts themselves avoided the mask
