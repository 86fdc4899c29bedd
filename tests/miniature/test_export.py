"""The GGUF export is right: llama.cpp's logits equal the JAX training code's on the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
llama_cpp = pytest.importorskip("llama_cpp")

from miniature.export import write_gguf  # noqa: E402
from miniature.model import Shape, forward, init_params  # noqa: E402
from miniature.tokenizer import Tokenizer  # noqa: E402
from miniature.world import WorldConfig, make_world, prompt_text  # noqa: E402

# llama.cpp keeps the KV cache in f16 (its default), the training code computes in f32: logits
# agree to about 1e-3 of their range. A wrong RoPE convention, norm eps, head split or embedding
# tie gives differences of the order of the logits themselves.
TOLERANCE = 0.02


def test_llama_cpp_logits_equal_training_logits(tmp_path):
    world = make_world(WorldConfig(seed=2, n_entities=60, n_given=8, n_family=8))
    tok = Tokenizer.for_world(world)
    shape = Shape(n_vocab=tok.n_vocab, n_embd=32, n_layer=2, n_head=4, n_ff=64, n_ctx=128)
    params = init_params(shape, jax.random.PRNGKey(7))
    rng = np.random.default_rng(0)  # non-trivial norm weights, so their placement is checked too
    params = {
        k: (v * (1 + 0.3 * rng.standard_normal(v.shape)).astype(np.float32) if "norm" in k else v) for k, v in params.items()
    }
    path = write_gguf(tmp_path / "tiny.gguf", "tiny", shape, params, tok)
    f = world.facts[3]
    ids = tok.encode(prompt_text(f.question) + f.answer + "<|im_end|>", bos=True)
    ids = ids + ids[1:]  # long enough (> 50 positions) for RoPE's later angles to matter
    model = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, flash_attn=True, verbose=False)
    assert model.tokenize((prompt_text(f.question)).encode(), add_bos=True, special=True) == tok.encode(
        prompt_text(f.question), bos=True
    )
    model.eval(ids)
    got = np.array(model.scores[: len(ids)], dtype=np.float32)
    want = np.asarray(forward(params, jax.numpy.asarray([ids]), shape))[0]
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 1.0
    assert float(np.abs(got - want).max()) < TOLERANCE, (float(np.abs(got - want).max()), scale)
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.99
    model.close()
