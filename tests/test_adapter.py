"""The llama.cpp adapter on real (tiny) models: logits views, rollback, prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest

from eft_local.errors import UserError
from eft_local.llama.adapter import LlamaModel, check_gguf


@pytest.fixture()
def base(family):
    m = LlamaModel(family.base, n_ctx=256)
    yield m
    m.close()


def test_metadata(base, family):
    chat = LlamaModel(family.chat, n_ctx=64)
    assert base.n_vocab == 512 and base.supports_rollback
    assert chat.chat_template and "<|im_start|>" in chat.chat_template
    assert base.chat_template is None
    assert chat.is_eog(4) and chat.is_eog(2) and not chat.is_eog(100)
    assert base.token_text(5) == b"<0x00>"
    chat.close()


def test_tokenize_and_pieces_round_trip(base):
    ids = base.tokenize("hello world", add_bos=True, special=False)
    assert ids[0] == base.bos
    text = b"".join(base.piece(t) for t in ids[1:]).decode()
    assert text.strip() == "hello world"


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_rollback_then_eval_equals_fresh_evaluation(base, family, cut):
    ids = base.tokenize("the answer is yes and no", add_bos=True, special=False)
    drafted = ids + [300, 301, 302]
    base.eval(drafted, len(drafted))
    base.rollback(cut)
    assert base.n_past == cut
    after = base.eval(ids[cut:], len(ids) - cut).copy()
    fresh = LlamaModel(family.base, n_ctx=256)
    expect = fresh.eval(ids, len(ids))[cut:].copy()
    fresh.close()
    np.testing.assert_allclose(after, expect, atol=1e-4)


def test_prefill_reuses_common_prefix(base):
    a = base.tokenize("one two three four", add_bos=True, special=False)
    b = a[:-1] + base.tokenize(" five", add_bos=False, special=False)
    base.prefill(a)
    row = base.prefill(b).copy()
    assert base.tokens == b
    base.rollback(0)
    np.testing.assert_allclose(row, base.eval(b, 1)[0], atol=1e-4)


def test_eval_returns_requested_rows_and_checks_context(base):
    out = base.eval([1, 300, 301, 302], 3)
    assert out.shape == (3, base.n_vocab) and out.dtype == np.float32
    with pytest.raises(UserError, match="context full"):
        base.eval(list(range(300)), 1)


def test_check_gguf_rejects_missing_and_non_gguf(tmp_path):
    with pytest.raises(UserError, match="not found"):
        check_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(UserError, match="not a GGUF"):
        check_gguf(bad)
