"""Write a trained miniature model as a llama-architecture GGUF (through eft_local.llama.synthetic's writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, _write
from miniature.model import Shape
from miniature.tokenizer import Tokenizer


def write_gguf(path: Path, name: str, shape: Shape, params: dict, tok: Tokenizer) -> Path:
    """f32 tensors as trained; tied embeddings (no ``output.weight``); q/k unpermuted (the
    training code already uses llama.cpp's adjacent-pair RoPE)."""
    spec = ModelSpec(
        n_vocab=shape.n_vocab,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_head_kv=shape.n_head,
        n_ff=shape.n_ff,
        n_ctx_train=shape.n_ctx,
        chat_template=CHATML_TEMPLATE,
        eos_id=IM_END,
        name=f"miniature-{name}",
        extra_kv={"tokenizer.ggml.add_space_prefix": False},
    )
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    _write(Path(path), spec, tensors, list(tok.texts), list(tok.scores), list(tok.types))
    return Path(path)
