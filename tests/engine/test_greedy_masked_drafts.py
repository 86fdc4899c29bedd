"""Greedy drafts on a vocabulary with masked (padding) ids take the drafter row's own argmax
without building a masked copy; the tokens are those of the masked-copy path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from eft_local.engine import targets
from eft_local.engine.config import GenerationConfig
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import eft_distribution


def masked_copy_filtered(self, row, params):
    """The drafter's q as before the shortcut: always through a masked copy of the row."""
    return eft_distribution([row], [1.0], params, self.n, self.mask, self._z)


def run(engine, draft_tokens):
    cfg = GenerationConfig(SamplingParams(alpha=1.0, beta=1.0, temperature=0.0), max_tokens=40, draft_tokens=draft_tokens)
    fin = list(engine.generate(engine.prompt(raw="hello world"), cfg, np.random.default_rng(0)))[-1]
    return fin.token_ids


@pytest.mark.parametrize("draft_tokens", [4, None])
def test_greedy_drafts_with_masked_ids_match_the_masked_copy_path(engine, monkeypatch, draft_tokens):
    free = run(engine, draft_tokens)
    masked = np.array(sorted(set(free[1:6:2])), dtype=np.int64)  # ids the drafter does pick greedily
    monkeypatch.setattr(engine, "vocab", replace(engine.vocab, masked=masked))
    fast = run(engine, draft_tokens)
    with monkeypatch.context() as m:
        m.setattr(targets.Targets, "drafted", masked_copy_filtered)
        slow = run(engine, draft_tokens)
    assert fast == slow
    assert fast != free and not set(fast) & set(masked.tolist())
