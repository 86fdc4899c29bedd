"""One SentencePiece-style tokenizer for the whole family, written into every GGUF.

Pieces: the specials of ``eft_local.llama.synthetic`` (``<unk> <s> </s> <|im_start|> <|im_end|>``),
256 byte-fallback tokens, every printable ASCII character, ``▁`` and ``\\n``, and one piece per
word of the world (``▁word`` after a space, ``word`` at the start of a line). llama.cpp's SPM
tokenizer merges adjacent pieces only when the merged text is itself a piece, so every prefix of
a word is a piece too (``▁T ▁Ta ▁Tar ▁Tarn``): a word then always merges to itself. No space is
prepended (``add_space_prefix`` false), so the ChatML text tokenizes the same in training and in
llama.cpp. ``encode`` is the same bigram-merge algorithm in Python (tested against llama.cpp).
"""

from __future__ import annotations

import heapq
from functools import lru_cache

from eft_local.llama.synthetic import (
    BOS,
    EOS,
    IM_END,
    IM_START,
    SPECIALS,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    UNK,
)
from miniature.world import World, all_words

SP = "\u2581"
__all__ = ["Tokenizer", "BOS", "EOS", "IM_END", "IM_START", "UNK"]


class Tokenizer:
    def __init__(self, words_spaced: set[str], words_initial: set[str]):
        pieces = [SP, "\n"] + [chr(c) for c in range(33, 127)]
        seen = set(pieces)
        for word in sorted({SP + w for w in words_spaced} | set(words_initial)):
            for k in range(2, len(word) + 1):
                p = word[:k]
                if p not in seen:
                    seen.add(p)
                    pieces.append(p)
        self.texts = list(SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + pieces
        self.types = [TOKEN_UNKNOWN] + [TOKEN_CONTROL] * (len(SPECIALS) - 1) + [TOKEN_BYTE] * 256 + [TOKEN_NORMAL] * len(pieces)
        n_fixed = len(SPECIALS) + 256
        # Longer pieces merge first; ties by position (as in eft_local.llama.synthetic).
        self.scores = [0.0] * n_fixed + [float(len(p)) - 1e-4 * k for k, p in enumerate(pieces)]
        self.ids = {t: i for i, t in enumerate(self.texts) if i >= n_fixed}
        self.special_ids = {t: i for i, t in enumerate(SPECIALS)}
        self.byte0 = len(SPECIALS)

    @classmethod
    def for_world(cls, world: World) -> Tokenizer:
        return cls(*all_words(world))

    @property
    def n_vocab(self) -> int:
        return len(self.texts)

    def encode(self, text: str, *, bos: bool = False, special: bool = True) -> list[int]:
        out = [BOS] if bos else []
        parts = _split_specials(text, self.special_ids) if special else [text]
        for part in parts:
            if isinstance(part, int):
                out.append(part)
                continue
            s = part.replace(" ", SP)
            # No piece holds SP except at its start, nor "\n" with anything else: chunks are independent.
            start = 0
            for k in range(1, len(s) + 1):
                if k == len(s) or s[k] in (SP, "\n") or s[k - 1] == "\n":
                    out.extend(self._chunk(s[start:k]))
                    start = k
        return out

    def decode(self, ids: list[int]) -> str:
        buf = bytearray()
        for i in ids:
            t = self.texts[i]
            if self.types[i] == TOKEN_BYTE:
                buf.append(int(t[3:5], 16))
            elif self.types[i] == TOKEN_NORMAL:
                buf += t.replace(SP, " ").encode()
            else:
                buf += t.encode()
        return buf.decode("utf-8", "replace")

    @lru_cache(maxsize=65536)  # noqa: B019 - one tokenizer per build, bounded
    def _chunk(self, chunk: str) -> tuple[int, ...]:
        return tuple(_spm(chunk, self.ids, self.scores, self.byte0))


def _split_specials(text: str, specials: dict[str, int]) -> list[str | int]:
    parts: list[str | int] = []
    i = start = 0
    while i < len(text):
        for sp, tid in specials.items():
            if text.startswith(sp, i):
                if start < i:
                    parts.append(text[start:i])
                parts.append(tid)
                i += len(sp)
                start = i
                break
        else:
            i += 1
    if start < len(text):
        parts.append(text[start:])
    return parts


def _spm(text: str, ids: dict[str, int], scores: list[float], byte0: int) -> list[int]:
    """llama.cpp's ``llm_tokenizer_spm``: merge the best-scoring adjacent pair that is a piece,
    ties to the left, until none is; unknown symbols fall back to their UTF-8 bytes."""
    sym = list(text)
    alive = [True] * len(sym)
    nxt = list(range(1, len(sym) + 1))
    prv = list(range(-1, len(sym) - 1))
    heap: list[tuple[float, int, int, str]] = []

    def push(left: int) -> None:
        right = nxt[left] if left >= 0 else -1
        if left < 0 or right >= len(sym):
            return
        merged = sym[left] + sym[right]
        if merged in ids:
            heapq.heappush(heap, (-scores[ids[merged]], left, len(sym[left]), merged))

    for i in range(len(sym) - 1):
        push(i)
    while heap:
        _, left, left_len, merged = heapq.heappop(heap)
        right = nxt[left]
        if not alive[left] or right >= len(sym) or sym[left] + sym[right] != merged or len(sym[left]) != left_len:
            continue
        sym[left] = merged
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[left] < len(sym):
            prv[nxt[left]] = left
        push(prv[left])
        push(left)
    out = []
    i = 0
    while i < len(sym):
        if sym[i] in ids:
            out.append(ids[sym[i]])
        else:
            out.extend(byte0 + b for b in sym[i].encode("utf-8"))
        i = nxt[i]
    return out
