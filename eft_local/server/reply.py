"""OpenAI-shaped bodies of one answer: full responses, stream chunks, usage, log-probabilities.

Log-probabilities (``mix.logprobs``: the EFT distribution at T = 1, no filters) come in
the two shapes clients read: the legacy completions shape ``{tokens, token_logprobs,
top_logprobs, text_offset}`` (what lm-evaluation-harness parses; an echoed prompt's first
token has ``null``) and the chat shape ``{content: [{token, logprob, bytes, top_logprobs}]}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.mix.logprobs import TokenLogprob
from eft_local.server.answers import Answer
from eft_local.server.request import GenRequest
from eft_local.server.state import TokenTexts

Entry = tuple[int, TokenLogprob | None]  # a token id and its log-probability (None: the first prompt token)


def to_json(obj: Any) -> bytes:
    """Compact JSON, as starlette's JSONResponse writes it."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def generated(tokens: Sequence[TokenEvent]) -> list[Entry]:
    """The generated tokens with their log-probabilities (the text-only tail event dropped)."""
    return [(ev.token_id, ev.logprob) for ev in tokens if ev.token_id >= 0]


class LegacyLogprobs:
    """The completions shape, built up over one choice (``text_offset`` runs on across chunks)."""

    def __init__(self, texts: TokenTexts, as_ids: bool = False) -> None:
        self.texts = texts
        self.offset = 0
        self.name = (lambda t: f"token_id:{t}") if as_ids else texts.text

    def body(self, entries: Sequence[Entry]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, lp in entries:
            text = self.texts.text(token)
            out["tokens"].append(self.name(token))
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            out["token_logprobs"].append(None if lp is None else lp.logprob)
            out["top_logprobs"].append(None if lp is None else self._top(lp))
        return out

    def _top(self, lp: TokenLogprob) -> dict[str, float]:
        """The top alternatives by text, plus the chosen token (as vLLM does): greedy iff its
        value is the largest (the values are one expression, so equality is exact)."""
        top: dict[str, float] = {}
        for token, value in lp.top:
            top.setdefault(self.name(token), value)
        top.setdefault(self.name(lp.token), lp.logprob)
        return top


def chat_logprobs(entries: Sequence[Entry], texts: TokenTexts, as_ids: bool = False) -> dict[str, Any]:
    def one(token: int, value: float) -> dict[str, Any]:
        name = f"token_id:{token}" if as_ids else texts.text(token)
        return {"token": name, "logprob": value, "bytes": list(texts.bytes(token))}

    content = [{**one(t, lp.logprob), "top_logprobs": [one(a, v) for a, v in lp.top]} for t, lp in entries if lp is not None]
    return {"content": content, "refusal": None}


class Reply:
    """Builds the bodies of one answer to ``req`` (``kind``: "chat" or "completion")."""

    def __init__(self, kind: str, model: str, req: GenRequest, prompt_tokens: int, texts: TokenTexts) -> None:
        self.kind, self.model, self.req, self.prompt_tokens, self.texts = kind, model, req, prompt_tokens, texts
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.stream_logprobs = LegacyLogprobs(texts, req.token_names_are_ids)

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def usage(self, answers: Sequence[Answer]) -> dict[str, int]:
        prompt = sum(a.prompt_tokens for a in answers) or self.prompt_tokens
        n = sum(len(a.fin.token_ids) for a in answers if a.fin is not None)
        return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}

    @staticmethod
    def eft(answers: Sequence[Answer]) -> dict[str, Any]:
        stats = [a.fin.stats for a in answers if a.fin is not None]
        n, seconds = sum(s.n_tokens for s in stats), sum(s.decode_seconds for s in stats)
        return {
            "drafted": sum(s.drafted for s in stats),
            "accepted": sum(s.accepted for s in stats),
            "tokens_per_second": round(n / seconds, 2) if n else 0.0,
        }

    @staticmethod
    def reason(fin: FinishedEvent | None) -> str:
        return "length" if fin is None or fin.reason == "length" else "stop"

    def choice(self, a: Answer) -> dict[str, Any]:
        """One prompt's choice of a non-streamed answer."""
        if self.kind != "chat":
            return self._completion_choice(a)
        return {
            "index": 0,
            "message": {"role": "assistant", "content": a.fin.text if a.fin else ""},
            "logprobs": self._chat_logprobs(a.tokens) if self.req.logprobs is not None else None,
            "finish_reason": self.reason(a.fin),
        }

    def envelope(self, answers: Sequence[Answer]) -> tuple[bytes, bytes]:
        """A non-streamed answer's JSON around its choices: (up to ``"choices":[``, from ``]`` on).
        ``answers`` need only their counts (``prompt_count``, ``fin``): the choices are already bytes."""
        out = self._head("chat.completion" if self.kind == "chat" else "text_completion")
        out.update(choices=[], usage=self.usage(answers), eft=self.eft(answers))
        text = to_json(out)
        cut = text.index(b'"choices":[]') + len(b'"choices":[')
        return text[:cut], text[cut:]

    def _completion_choice(self, a: Answer) -> dict[str, Any]:
        echoed = list(zip(a.prompt_ids or (), a.echo)) if a.echo is not None else []
        text = (self._prompt_text(a) if a.echo is not None else "") + (a.fin.text if a.fin else "")
        logprobs = None
        if self.req.logprobs is not None:
            logprobs = LegacyLogprobs(self.texts, self.req.token_names_are_ids).body(echoed + generated(a.tokens))
        return {"index": a.index, "text": text, "logprobs": logprobs, "finish_reason": self.reason(a.fin)}

    def _chat_logprobs(self, tokens: Sequence[TokenEvent]) -> dict[str, Any]:
        return chat_logprobs(generated(tokens), self.texts, self.req.token_names_are_ids)

    def _prompt_text(self, a: Answer) -> str:
        prompts = self.req.prompts or []
        given = prompts[a.index] if a.index < len(prompts) else None
        return given if isinstance(given, str) else self.texts.join(a.prompt_ids or [])

    def chunk(
        self,
        *,
        role: bool = False,
        text: str = "",
        tokens: Sequence[TokenEvent] = (),
        finished: FinishedEvent | None = None,
        usage_of: FinishedEvent | None = None,
    ) -> dict[str, Any]:
        chat = self.kind == "chat"
        out = self._head("chat.completion.chunk" if chat else "text_completion")
        if usage_of is not None:
            done = [Answer(0, fin=usage_of)]
            out.update(choices=[], usage=self.usage(done), eft=self.eft(done))
            return out
        reason = self.reason(finished) if finished is not None else None
        logprobs = None
        if self.req.logprobs is not None and tokens:
            entries = generated(tokens)
            logprobs = self._chat_logprobs(tokens) if chat else self.stream_logprobs.body(entries)
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}
        out["choices"] = [choice]
        if finished is not None:
            out["eft"] = self.eft([Answer(0, fin=finished)])
        if self.req.include_usage:
            out["usage"] = None
        return out
