"""A UI-free generation session: what the chat app and the HTTP server share.

One ``Session`` wraps one loaded ``EftEngine``:

- prompts: a conversation is fitted into the context by dropping its oldest turns (the
  chat app), or taken exactly and refused with ``PromptTooLong`` when it cannot fit (the
  server);
- seeds: request/prompt *i* with seed *S* draws from ``rng_for(S, i)``, the same stream
  ``eft-local run`` uses for its *i*-th prompt;
- the engine lock: ``Session.lock`` is what callers queue on (a blocking lock), and the
  engine itself refuses a second concurrent generation (``EngineBusy``) as a last line;
- cancellation: a ``cancel()`` callable the decoder checks between prefill chunks and
  before every speculative round;
- events carry a snapshot of the stats (``GenStats.snapshot``), never the live object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.eft_engine import EftEngine
from eft_local.engine.events import Event
from eft_local.engine.prompt_check import PromptTooLong, check_prompt

__all__ = ["PromptTooLong", "Session", "rng_for", "with_system"]  # PromptTooLong: what the server catches

Messages = Sequence[dict[str, Any]]


def rng_for(seed: int | None, index: int) -> np.random.Generator:
    """Prompt i draws from its own stream seeded by (seed, i): reruns repeat, prompts are independent."""
    return np.random.default_rng([seed, index]) if seed is not None else np.random.default_rng()


def with_system(messages: Messages, system: str | None) -> list[dict[str, Any]]:
    """``messages`` with ``system`` in front, unless they bring their own system message."""
    messages = list(messages)
    if system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


class Session:
    def __init__(
        self, engine: EftEngine, *, prompt_style: str = "template", system_prompt: str | None = None, plain_content: bool = False
    ) -> None:
        self.engine = engine
        self.plain_content = plain_content  # message text never becomes control tokens (see prompts.role_prompts)
        self.prompt_style = prompt_style
        self.system_prompt = system_prompt
        self.lock = threading.Lock()  # held by whoever drives the engine; others wait on it

    # -- prompts ---------------------------------------------------------------------------
    def fit(self, messages: Messages, max_tokens: int) -> tuple[dict[str, list[int]], int]:
        """Prompt for the most recent turns that leave room to answer; returns (prompt, #dropped)."""
        reserve = min(max_tokens, self.engine.chat.n_ctx // 4)
        return self.engine.fit_prompt(messages, style=self.prompt_style, reserve=reserve)

    def prompt(self, *, messages: Messages | None = None, raw: str | None = None) -> dict[str, list[int]]:
        """The exact prompt (nothing dropped); ``PromptTooLong`` when a role's context can't hold it."""
        if raw is not None:
            prompt = self.engine.prompt(raw=raw, plain_content=self.plain_content)
        else:
            prompt = self.engine.prompt(
                messages=with_system(messages or [], self.system_prompt),
                style=self.prompt_style,
                plain_content=self.plain_content,
            )
        check_prompt(prompt, self.engine.models)
        return prompt

    # -- generation ------------------------------------------------------------------------
    def generate(
        self,
        prompt: dict[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """The engine's events; a llama.cpp failure empties the caches so the next request starts clean."""
        gen = self.engine.generate(prompt, config, rng, cancel=cancel)
        try:
            yield from gen
        except RuntimeError:
            self.engine.reset()
            raise
        finally:
            gen.close()

    def context_used(self) -> dict[str, tuple[int, int]]:
        return self.engine.context_used()

    def close(self, timeout: float = 30.0) -> bool:
        """Free the models once no generation holds the lock (False if one still did after ``timeout``)."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            self.engine.close()
        finally:
            self.lock.release()
        return True
