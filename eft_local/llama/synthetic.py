"""Tiny synthetic llama-architecture GGUF models for tests and benchmarks.

A *family* is built from one random "reference" network:

- ``reference``: the network itself;
- ``chat``: the same network with its output projection nudged by ``chat_shift``;
- ``base``: the same network plus ``extra_layers`` layers whose ``attn_output`` and
  ``ffn_down`` are zero (they cost compute but leave the residual stream untouched) and an
  output projection nudged by ``base_shift``.

With both shifts at zero every model computes exactly the reference's logits; the shifts
control how often EFT agrees with the chat model, i.e. the speculative acceptance rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the a an and of to in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "hello world yes assistant user system model answer question"
).split()

SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK, BOS, EOS, IM_START, IM_END = range(5)

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def build_vocab(n_vocab: int, shuffle_seed: int | None = None) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style vocabulary: specials, 256 byte tokens, characters, words, fillers.

    ``shuffle_seed`` permutes the non-special texts: same size, different tokenizer.
    """
    texts = list(SPECIALS)
    types = [TOKEN_UNKNOWN] + [TOKEN_CONTROL] * (len(SPECIALS) - 1)
    texts += [f"<0x{b:02X}>" for b in range(256)]
    types += [TOKEN_BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + w for w in WORDS] + ["\n"]
    i = 0
    while len(texts) + len(pieces) < n_vocab:
        pieces.append(f"\u2581w{i}")
        i += 1
    pieces = pieces[: n_vocab - len(texts)]
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        pieces = [pieces[j] for j in rng.permutation(len(pieces))]
    texts += pieces
    types += [TOKEN_NORMAL] * len(pieces)
    # Longer pieces win merges: score by length, ties broken by position.
    scores = [0.0] * (len(SPECIALS) + 256) + [float(len(p)) - 1e-4 * k for k, p in enumerate(pieces)]
    return texts, scores, types


@dataclass
class ModelSpec:
    """Shape of one synthetic model."""

    n_vocab: int = 512
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 64
    n_ctx_train: int = 2048
    extra_layers: int = 0
    output_shift: float = 0.0
    shift_seed: int = 1
    pad_vocab_to: int | None = None
    shuffle_vocab_seed: int | None = None
    chat_template: str | None = None
    eos_id: int = EOS
    name: str = "synthetic"
    extra_kv: dict[str, str | bool] = field(default_factory=dict)


def _weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Random weights shared by a family (same seed -> same network)."""
    rng = np.random.default_rng(seed)
    d, ff, v = spec.n_embd, spec.n_ff, spec.n_vocab
    d_kv = d // spec.n_head * spec.n_head_kv

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    t = {
        "token_embd.weight": mat(v, d, np.sqrt(d)),
        "output_norm.weight": np.ones(d, np.float32),
        "output.weight": mat(v, d, 4.0),
    }
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(d, np.float32)
        t[p + "attn_q.weight"] = mat(d, d)
        t[p + "attn_k.weight"] = mat(d_kv, d)
        t[p + "attn_v.weight"] = mat(d_kv, d)
        t[p + "attn_output.weight"] = mat(d, d)
        t[p + "ffn_norm.weight"] = np.ones(d, np.float32)
        t[p + "ffn_gate.weight"] = mat(ff, d)
        t[p + "ffn_up.weight"] = mat(ff, d)
        t[p + "ffn_down.weight"] = mat(d, ff)
    return t


def _add_inert_layers(t: dict[str, np.ndarray], spec: ModelSpec, seed: int) -> None:
    """Layers that cost compute but, with zero output projections, change nothing."""
    rng = np.random.default_rng(seed + 1000)
    d, ff = spec.n_embd, spec.n_ff
    d_kv = d // spec.n_head * spec.n_head_kv
    for i in range(spec.n_layer, spec.n_layer + spec.extra_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(d, np.float32)
        t[p + "attn_q.weight"] = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        t[p + "attn_k.weight"] = (rng.standard_normal((d_kv, d)) / np.sqrt(d)).astype(np.float32)
        t[p + "attn_v.weight"] = (rng.standard_normal((d_kv, d)) / np.sqrt(d)).astype(np.float32)
        t[p + "attn_output.weight"] = np.zeros((d, d), np.float32)
        t[p + "ffn_norm.weight"] = np.ones(d, np.float32)
        t[p + "ffn_gate.weight"] = (rng.standard_normal((ff, d)) / np.sqrt(d)).astype(np.float32)
        t[p + "ffn_up.weight"] = (rng.standard_normal((ff, d)) / np.sqrt(d)).astype(np.float32)
        t[p + "ffn_down.weight"] = np.zeros((d, ff), np.float32)


def write_model(path: str | Path, spec: ModelSpec, seed: int = 0) -> Path:
    """Write one synthetic GGUF; the network is determined by ``seed`` and ``spec`` shape."""
    path = Path(path)
    t = _weights(spec, seed)
    if spec.output_shift:
        rng = np.random.default_rng(spec.shift_seed)
        out = t["output.weight"]
        out += (rng.standard_normal(out.shape) * spec.output_shift * out.std()).astype(np.float32)
    if spec.extra_layers:
        _add_inert_layers(t, spec, seed)
    texts, scores, types = build_vocab(spec.n_vocab, spec.shuffle_vocab_seed)
    if spec.pad_vocab_to and spec.pad_vocab_to > spec.n_vocab:
        n_pad = spec.pad_vocab_to - spec.n_vocab
        texts += [f"[PAD{i}]" for i in range(n_pad)]
        scores += [0.0] * n_pad
        types += [TOKEN_CONTROL] * n_pad
        for name in ("token_embd.weight", "output.weight"):
            pad = np.zeros((n_pad, spec.n_embd), np.float32)
            t[name] = np.concatenate([t[name], pad])
    _write(path, spec, t, texts, scores, types)
    return path


def _write(path: Path, spec: ModelSpec, t: dict, texts: list, scores: list, types: list) -> None:
    n_layer = spec.n_layer + spec.extra_layers
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(spec.name)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(texts)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(spec.eos_id)
    w.add_unk_token_id(UNK)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if spec.chat_template:
        w.add_chat_template(spec.chat_template)
    for key, value in spec.extra_kv.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        else:
            w.add_string(key, value)
    for name, arr in t.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@dataclass
class Family:
    base: Path
    chat: Path
    reference: Path

    def paths(self) -> dict[str, Path]:
        return {"base": self.base, "chat": self.chat, "reference": self.reference}


def write_family(
    directory: str | Path,
    *,
    shape: ModelSpec | None = None,
    extra_layers: int = 2,
    chat_shift: float = 0.5,
    base_shift: float = 0.5,
    seed: int = 0,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Family:
    """Write a base/chat/reference triple sharing one vocabulary (see module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shape = shape or ModelSpec()
    ref = ModelSpec(**{**shape.__dict__, "name": "reference"})
    chat = ModelSpec(
        **{
            **shape.__dict__,
            "name": "chat",
            "output_shift": chat_shift,
            "shift_seed": seed + 11,
            "chat_template": chat_template,
            "eos_id": IM_END if chat_template else EOS,
        }
    )
    base = ModelSpec(
        **{**shape.__dict__, "name": "base", "output_shift": base_shift, "shift_seed": seed + 22, "extra_layers": extra_layers}
    )
    return Family(
        base=write_model(directory / "base.gguf", base, seed),
        chat=write_model(directory / "chat.gguf", chat, seed),
        reference=write_model(directory / "reference.gguf", ref, seed),
    )
