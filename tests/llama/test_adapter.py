"""The llama.cpp adapter on real (tiny) models: logits views, rollback, prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest

from eft_local.errors import UserError
from eft_local.llama.adapter import LlamaModel


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


def decoded_tokens(model, monkeypatch) -> list[int]:
    """Every token ``model`` hands to llama.cpp from now on (a spy on its one decode path)."""
    seen: list[int] = []
    real = type(model)._decode

    def spy(batch):
        seen.extend(t for span in batch for t in span.tokens)
        return real(model, batch)

    monkeypatch.setattr(model, "_decode", spy)
    return seen


def test_prefill_reuses_common_prefix(base, monkeypatch):
    a = base.tokenize("one two three four", add_bos=True, special=False)
    b = a[:-1] + base.tokenize(" five", add_bos=False, special=False)
    base.prefill(a)
    decoded = decoded_tokens(base, monkeypatch)
    row = base.prefill(b).copy()
    assert base.tokens == b
    assert decoded == b[len(a) - 1 :]  # only what differs from the cached prompt is evaluated
    decoded.clear()
    assert base.prefill(b) is not None and decoded == b[-1:]  # the same prompt again: its last token, for its row
    base.rollback(0)
    np.testing.assert_allclose(row, base.eval(b, 1)[0], atol=1e-4)


def test_eval_returns_requested_rows_and_checks_context(base):
    out = base.eval([1, 300, 301, 302], 3)
    assert out.shape == (3, base.n_vocab) and out.dtype == np.float32
    with pytest.raises(UserError, match="context full"):
        base.eval(list(range(300)), 1)


@pytest.mark.parametrize("path", ["eval", "eval_many", "prefill"])
def test_every_decode_of_a_model_with_rpc_layers_checks_its_servers(family, monkeypatch, path):
    """rpc.py promises a liveness check before every decode of a model with RPC layers,
    whichever public method decodes (one sequence or several)."""
    from eft_local.llama import rpc

    model = LlamaModel(family.base, n_ctx=64, n_seq=2)
    checked: list[tuple[list[str], str]] = []
    monkeypatch.setattr(rpc, "check_alive", lambda eps, what="": checked.append((list(eps), what)))
    model.rpc_servers = ["127.0.0.1:9"]  # as if loaded with --rpc (check_alive is faked)
    try:
        if path == "eval":
            model.eval([1, 5, 6])
        elif path == "eval_many":
            model.eval_many([(0, [1, 5], 1), (1, [1, 6, 7], 2)])
        else:
            model.prefill([1, 5, 6, 7])
    finally:
        model.rpc_servers = []
        model.close()
    assert checked == [(["127.0.0.1:9"], "base.gguf")]


def test_plan_batches_packs_whole_spans_and_cuts_long_ones():
    from eft_local.llama.adapter import Span, plan_batches

    spans = [Span(0, [1] * 3, 1), Span(1, [2] * 2, 2), Span(2, [3] * 9, 5)]
    plan = plan_batches(spans, 4)
    shapes = [[(j, len(p.tokens), p.n_logits) for j, p in batch] for batch in plan]
    # 3 + 2 > 4: the second span opens a batch; the 9-token span goes 4 + 4 + 1 with its
    # last 5 positions' logits split 0 + 4 + 1
    assert shapes == [[(0, 3, 1)], [(1, 2, 2)], [(2, 4, 0)], [(2, 4, 4)], [(2, 1, 1)]]
    assert all(sum(len(p.tokens) for _, p in b) <= 4 for b in plan)


def test_long_eval_with_many_rows_equals_short_evals(family):
    """More tokens and logits rows than n_batch: cut into decodes, earlier rows copied."""
    long = LlamaModel(family.base, n_ctx=128, n_batch=8)
    ids = [1, *range(300, 320)]
    rows = long.eval(ids, 12).copy()
    long.close()
    one = LlamaModel(family.base, n_ctx=128, n_batch=8)
    expect = np.concatenate([one.eval(ids[i : i + 7], 7).copy() for i in range(0, len(ids), 7)])[-12:]
    one.close()
    assert rows.shape == (12, 512)
    np.testing.assert_allclose(rows, expect, atol=2e-3)


def test_failed_decode_leaves_every_sequence_as_it_was(family, monkeypatch):
    import llama_cpp as ll

    from eft_local.llama import adapter

    model = LlamaModel(family.base, n_ctx=128, n_batch=8)
    model.eval([1, 300, 301])
    real, calls = ll.llama_decode, {"n": 0}

    def second_fails(ctx, batch):
        calls["n"] += 1
        return 1 if calls["n"] == 2 else real(ctx, batch)

    monkeypatch.setattr(adapter.ll, "llama_decode", second_fails)
    try:
        with pytest.raises(RuntimeError, match="llama_decode failed"):
            model.eval(list(range(302, 314)), 1)  # 12 tokens: two decodes; the second fails
        assert model.tokens == [1, 300, 301] and model.seq_pos_max(0) == 2
    finally:
        model.close()
