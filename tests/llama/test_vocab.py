"""One tokenizer across the three roles."""

from __future__ import annotations

import numpy as np
import pytest

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.errors import UserError
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.vocab import check_vocab
from eft_local.mix.params import SamplingParams


def load(paths):
    return {r: LlamaModel(p, n_ctx=128) for r, p in paths.items()}


def test_same_family_shares_full_vocab(family):
    shared = check_vocab(load(family.paths()))
    assert shared.n == 512 and shared.masked.size == 0


def test_padded_twin_is_accepted_over_shared_prefix(family, padded_base):
    models = load({**family.paths(), "base": padded_base})
    assert models["base"].n_vocab == 576
    assert check_vocab(models).n == 512


def test_padded_twin_never_emits_padding(family, padded_base):
    engine = EftEngine.load({**family.paths(), "base": padded_base}, n_ctx=256)
    prompt = engine.prompt(raw="hello")
    cfg = GenerationConfig(SamplingParams(temperature=3.0, top_p=1.0), max_tokens=60, draft_tokens=4)
    for seed in range(5):
        fin = list(engine.generate(prompt, cfg, np.random.default_rng(seed)))[-1]
        assert fin.token_ids and max(fin.token_ids) < 512
    engine.close()


def test_different_tokenizer_is_refused_naming_both_files(family, foreign_model):
    models = load({**family.paths(), "reference": foreign_model})
    with pytest.raises(UserError) as e:
        check_vocab(models)
    msg = str(e.value)
    assert "foreign.gguf" in msg and "chat.gguf" in msg and "\n" not in msg
