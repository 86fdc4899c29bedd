"""Driving one generation on a worker thread and batching its tokens for the UI.

The worker never waits for the UI: it posts (thread-safe, non-blocking) one
``TokensArrived`` per ~30 ms with all text produced since the last post, so a model
decoding thousands of tokens/s costs the UI ~30 repaints/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from textual.message import Message

from ..decoder import EftEngine, GenerationConfig
from ..events import FinishedEvent, GenStats, StatsEvent, TokenEvent
from .conversation import Span

FLUSH_SECONDS = 0.03


class TokensArrived(Message):
    def __init__(self, target: Any, text: str, spans: list[Span]) -> None:
        super().__init__()
        self.target, self.text, self.spans = target, text, spans


class StatsUpdated(Message):
    def __init__(self, target: Any, stats: GenStats, context: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.target, self.stats, self.context = target, stats, context


class GenerationFinished(Message):
    def __init__(self, target: Any, result: FinishedEvent, context: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.target, self.result, self.context = target, result, context


def run_stream(
    engine: EftEngine,
    prompt: dict[str, list[int]],
    config: GenerationConfig,
    seed: int | None,
    cancel: Callable[[], bool],
    post: Callable[[Message], Any],
    target: Any,
    flush_seconds: float = FLUSH_SECONDS,
) -> FinishedEvent:
    """Run ``engine.generate`` and post batched messages about ``target``; returns the result."""
    text: list[str] = []
    spans: list[Span] = []
    last = time.perf_counter()
    result: FinishedEvent | None = None
    for ev in engine.generate(prompt, config, np.random.default_rng(seed), cancel=cancel):
        if isinstance(ev, TokenEvent):
            text.append(ev.text)
            spans.append((ev.text, ev.delta))
            now = time.perf_counter()
            if now - last >= flush_seconds:
                post(TokensArrived(target, "".join(text), spans))
                text, spans, last = [], [], now
        elif isinstance(ev, StatsEvent):
            post(StatsUpdated(target, ev.stats, engine.context_used()))
        elif isinstance(ev, FinishedEvent):
            result = ev
    if spans:
        post(TokensArrived(target, "".join(text), spans))
    assert result is not None
    post(GenerationFinished(target, result, engine.context_used()))
    return result
