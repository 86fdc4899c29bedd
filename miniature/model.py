"""The miniature llama network in JAX: exactly what llama.cpp's ``llama`` architecture computes.

Conventions (they are what the GGUF export relies on, and ``tests/miniature`` checks them):
weights are stored as GGUF expects (``(out, in)`` matrices, ``y = x @ W.T``); RoPE rotates
adjacent pairs (llama.cpp's "normal" rope, so q/k are written unpermuted); RMSNorm with
eps 1e-5; SwiGLU feed-forward; tied input/output embeddings (no ``output.weight``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

RMS_EPS = 1e-5
ROPE_BASE = 10000.0


@dataclass(frozen=True)
class Shape:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


def init_params(shape: Shape, key: jax.Array) -> dict[str, jax.Array]:
    d, ff, v = shape.n_embd, shape.n_ff, shape.n_vocab
    keys = iter(jax.random.split(key, 2 + 7 * shape.n_layer))

    def mat(rows: int, cols: int, scale: float = 1.0) -> jax.Array:
        return jax.random.normal(next(keys), (rows, cols), jnp.float32) * (scale / np.sqrt(cols))

    out_scale = 1.0 / np.sqrt(2 * shape.n_layer)
    p = {"token_embd.weight": mat(v, d, 0.02 * np.sqrt(d) * 25), "output_norm.weight": jnp.ones(d, jnp.float32)}
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        p[b + "attn_norm.weight"] = jnp.ones(d, jnp.float32)
        p[b + "attn_q.weight"] = mat(d, d)
        p[b + "attn_k.weight"] = mat(d, d)
        p[b + "attn_v.weight"] = mat(d, d)
        p[b + "attn_output.weight"] = mat(d, d, out_scale)
        p[b + "ffn_norm.weight"] = jnp.ones(d, jnp.float32)
        p[b + "ffn_gate.weight"] = mat(ff, d)
        p[b + "ffn_up.weight"] = mat(ff, d)
        p[b + "ffn_down.weight"] = mat(d, ff, out_scale)
    return p


def _rms(x: jax.Array, w: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w


def _rope(x: jax.Array, pos: jax.Array) -> jax.Array:
    """x: (..., T, H, hd); rotate pairs (x[2i], x[2i+1]) by pos * base^(-2i/hd)."""
    hd = x.shape[-1]
    inv = ROPE_BASE ** (-jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)
    ang = pos[:, None].astype(jnp.float32) * inv[None, :]  # (T, hd/2)
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return jnp.stack([r0, r1], axis=-1).reshape(x.shape)


def forward(params: dict[str, jax.Array], tokens: jax.Array, shape: Shape) -> jax.Array:
    """Logits (B, T, V) for token ids (B, T), positions 0..T-1, causal attention."""
    bsz, t = tokens.shape
    h, hd = shape.n_head, shape.n_embd // shape.n_head
    emb = params["token_embd.weight"]
    x = emb[tokens]
    pos = jnp.arange(t)
    mask = jnp.tril(jnp.ones((t, t), bool))
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        y = _rms(x, params[b + "attn_norm.weight"])
        q = (y @ params[b + "attn_q.weight"].T).reshape(bsz, t, h, hd)
        k = (y @ params[b + "attn_k.weight"].T).reshape(bsz, t, h, hd)
        v = (y @ params[b + "attn_v.weight"].T).reshape(bsz, t, h, hd)
        q, k = _rope(q, pos), _rope(k, pos)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        att = jnp.where(mask[None, None], att, -1e30)
        att = jax.nn.softmax(att, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(bsz, t, shape.n_embd)
        x = x + o @ params[b + "attn_output.weight"].T
        y = _rms(x, params[b + "ffn_norm.weight"])
        g = jax.nn.silu(y @ params[b + "ffn_gate.weight"].T) * (y @ params[b + "ffn_up.weight"].T)
        x = x + g @ params[b + "ffn_down.weight"].T
    x = _rms(x, params["output_norm.weight"])
    return x @ emb.T


def n_params(params: dict) -> int:
    return int(sum(np.prod(v.shape) for v in params.values()))
