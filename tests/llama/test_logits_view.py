"""The adapter keeps one NumPy array over llama.cpp's logits buffer: every decode's rows are
still exactly llama.cpp's current logits, whatever the row counts before."""

from __future__ import annotations

import llama_cpp as ll
import numpy as np

from eft_local.llama.adapter import LlamaModel


def fresh_rows(model: LlamaModel, n_rows: int) -> np.ndarray:
    return np.ctypeslib.as_array(ll.llama_get_logits(model._ctx), shape=(n_rows, model.n_vocab)).copy()


def test_rows_are_the_current_logits_across_growing_and_shrinking_decodes(family):
    model = LlamaModel(family.base, n_ctx=256, n_batch=64)
    try:
        ids = model.tokenize("the answer is yes and no", add_bos=True, special=False)
        model.eval(ids[:2], 1)
        for n_tokens, n_rows in [(1, 1), (6, 6), (2, 2), (40, 40), (3, 1), (1, 1)]:
            toks = [(ids[-1] + j) % model.n_vocab for j in range(n_tokens)]
            rows = model.eval(toks, n_rows)
            assert rows.shape == (n_rows, model.n_vocab)
            np.testing.assert_array_equal(rows, fresh_rows(model, n_rows))
            assert np.shares_memory(rows, model._logits(n_rows))  # a view, not a copy
    finally:
        model.close()
    assert model._logits_view is None
