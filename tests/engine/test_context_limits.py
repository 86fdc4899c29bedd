"""A small context or batch never reaches a llama.cpp assert: long evals, prompts longer than the context."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eft_local.llama.adapter import LlamaModel
from tests.conftest import role_args, run_cli


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- small --n-ctx: never a batch larger than llama.cpp's n_batch (GGML_ASSERT, exit 134) --------
def test_adapter_reads_back_batch_and_context_sizes(family):
    m = LlamaModel(family.chat, n_ctx=64, n_threads=1)
    try:
        assert m.n_ctx >= 64 and m.n_batch <= 64  # llama.cpp pads n_ctx and clamps n_batch to what was asked
        assert m._batch is not None
    finally:
        m.close()


@pytest.mark.parametrize("n_ctx", [16, 17, 100])
def test_long_eval_with_many_logit_rows_under_a_small_batch(family, n_ctx):
    """166 tokens, 70 logit rows, n_batch <= 100: chunked, rows gathered, same logits as one big batch."""
    small = LlamaModel(family.chat, n_ctx=n_ctx, n_threads=1)
    big = LlamaModel(family.chat, n_ctx=512, n_threads=1)
    try:
        ids = [10 + (i * 7) % 400 for i in range(166)]
        got = np.array(small.eval(ids, 70))
        want = np.array(big.eval(ids, 70))
        assert got.shape == want.shape == (70, small.n_vocab)
        np.testing.assert_allclose(got, want, atol=0.05)  # chunk shapes round differently
        assert (got.argmax(1) == want.argmax(1)).mean() > 0.95
        assert small.n_past == 166
    finally:
        small.close()
        big.close()


@pytest.mark.parametrize("n_ctx,draft", [("16", "64"), ("64", "8"), ("128", "0"), ("128", None)])
def test_small_n_ctx_never_aborts(family, tmp_path, n_ctx, draft):
    prompt = tmp_path / "p.txt"
    prompt.write_text("the " * 40 + "\n" + "hello world\n")  # ~166 tokens with the template, and a short one
    args = ["run", "--prompt-file", str(prompt), *role_args(family), "--n-ctx", n_ctx, "--max-tokens", "30", "--seed", "1"]
    if draft is not None:
        args += ["--draft-tokens", draft]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "GGML_ASSERT" not in r.stderr and "Traceback" not in r.stderr
    out = rows(r.stdout)
    assert len(out) == 2 and all(row["finish_reason"] in ("stop", "length") for row in out)
    assert len(out[0]["prompt_token_ids"]) > int(n_ctx) // 2


def test_prompt_longer_than_the_context_is_an_error_row(family, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("the " * 200 + "\nhello\n")
    r = run_cli("run", "--prompt-file", str(prompt), *role_args(family), "--n-ctx", "128", "--max-tokens", "4")
    assert "GGML_ASSERT" not in r.stderr and "Traceback" not in r.stderr
    out = rows(r.stdout)
    assert out[0]["finish_reason"] == "error" and "n_ctx" in out[0]["error"]
    assert out[0]["error"].endswith("; shorten it or raise --n-ctx")  # the engine's fact, the command line's advice
    assert out[1]["finish_reason"] in ("stop", "length")
