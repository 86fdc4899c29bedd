"""One vocabulary for three models: check it, and find the ids EFT may emit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from eft_local.errors import UserError

# Models of one family may differ only by padding rows (Qwen2.5: 151936 vs 152064,
# Gemma 3: 262144 vs 262208); llama.cpp's own speculative example allows 128.
MAX_PADDING_DIFF = 256
_UNUSED_ATTR = 1 << 1
_PADDING_TEXT = re.compile(rb"^(\[PAD\d+\]|<pad_?\d*>|<\|?unused_?\d+\|?>|<unused\d+>)$")


class VocabModel(Protocol):
    path: object
    n_vocab: int
    tokenizer_model: str

    def token_text(self, token: int) -> bytes: ...
    def token_attr(self, token: int) -> int: ...


@dataclass(frozen=True)
class SharedVocab:
    """The id range all three roles agree on, and ids inside it never to emit."""

    n: int
    masked: np.ndarray  # sorted ids < n that are padding/unused


def _name(model: VocabModel) -> str:
    return str(getattr(model, "path", model))


def check_vocab(models: Mapping[str, VocabModel]) -> SharedVocab:
    """Refuse unless all roles share one tokenizer; return the shared id range.

    Compares the tokenizer type and every token text over the shared range against the
    chat model's (the drafter's); sizes may differ only by padding.
    """
    roles = list(models)
    ref_role = "chat" if "chat" in models else roles[0]
    first = models[ref_role]
    n = min(m.n_vocab for m in models.values())
    for role in roles:
        other = models[role]
        if other is first:
            continue
        _check_pair(first, other, n)
    texts = [first.token_text(t) for t in range(n)]
    masked = [t for t, text in enumerate(texts) if _is_padding(first, t, text)]
    return SharedVocab(n=n, masked=np.array(masked, dtype=np.int64))


def _check_pair(a: VocabModel, b: VocabModel, n: int) -> None:
    pair = f"{_name(a)} and {_name(b)}"
    if a.tokenizer_model != b.tokenizer_model:
        raise UserError(
            f"different tokenizers: {pair} ({a.tokenizer_model} vs {b.tokenizer_model}); "
            "EFT needs all three models from one family"
        )
    if abs(a.n_vocab - b.n_vocab) > MAX_PADDING_DIFF:
        raise UserError(
            f"vocabulary sizes differ too much: {pair} ({a.n_vocab} vs {b.n_vocab} tokens); "
            "EFT needs all three models from one family"
        )
    for t in range(n):
        ta, tb = a.token_text(t), b.token_text(t)
        if ta != tb:
            raise UserError(
                f"vocabularies differ: {pair} disagree at token {t} ({ta!r} vs {tb!r}); "
                "EFT needs all three models from one family"
            )


def _is_padding(model: VocabModel, token: int, text: bytes) -> bool:
    return bool(model.token_attr(token) & _UNUSED_ATTR) or bool(_PADDING_TEXT.match(text))
