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

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent, GenStats, StatsEvent, TokenEvent
from eft_local.engine.session import Session
from eft_local.tui.conversation import Span

FLUSH_SECONDS = 0.03
MAX_FLUSH_SECONDS = 0.25
CHARS_PER_SECOND_OF_DELAY = 8000  # Markdown re-renders the whole last block on every append


def flush_interval(block_chars: int, base: float = FLUSH_SECONDS) -> float:
    """Post less often while the current Markdown block grows: each post costs the UI thread
    (and, through the GIL, the decoder) time proportional to that block's length."""
    return min(MAX_FLUSH_SECONDS, base + block_chars / CHARS_PER_SECOND_OF_DELAY)


class Pacer:
    """Keeps the UI thread's CPU share under ``budget`` while an answer streams.

    Rendering a growing Markdown block runs on the UI thread and holds the GIL the decoder
    thread also needs, so every repaint slows generation. ``sample`` runs on the UI thread
    a few times a second, measures that thread's CPU time per wall second
    (``time.thread_time``), and stretches or shrinks the interval at which the worker posts
    text. The cost of streaming then stays a few percent of generation, whatever the
    terminal, the answer length or the model speed.
    """

    def __init__(self, budget: float = 0.06, interval: float = FLUSH_SECONDS, longest: float = 1.0) -> None:
        self.budget, self.interval, self.shortest, self.longest = budget, interval, interval, longest
        self.share = 0.0
        self._cpu, self._wall = time.thread_time(), time.perf_counter()

    def sample(self) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        self.share = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        if self.share > self.budget:
            self.interval = min(self.longest, self.interval * 1.5)
        elif self.share < self.budget / 2:
            self.interval = max(self.shortest, self.interval / 1.25)


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
    engine: Session | EftEngine,
    prompt: dict[str, list[int]],
    config: GenerationConfig,
    rng: np.random.Generator,
    cancel: Callable[[], bool],
    post: Callable[[Message], Any],
    target: Any,
    flush_seconds: float = FLUSH_SECONDS,
    pacer: Pacer | None = None,
) -> FinishedEvent:
    """Run ``engine.generate`` and post batched messages about ``target``; returns the result."""
    text: list[str] = []
    spans: list[Span] = []
    last = time.perf_counter()
    result: FinishedEvent | None = None
    held: float | None = None  # delta of tokens that showed no text yet (partial UTF-8)
    block = 0  # characters since the last paragraph break
    interval = flush_seconds
    for ev in engine.generate(prompt, config, rng, cancel=cancel):
        if isinstance(ev, TokenEvent):
            d = _stronger(held, ev.delta)
            if not ev.text:
                held = d
                continue
            held = None
            text.append(ev.text)
            spans.append((ev.text, d))
            now = time.perf_counter()
            if now - last >= (max(interval, pacer.interval) if pacer else interval):
                chunk = "".join(text)
                post(TokensArrived(target, chunk, spans))
                text, spans, last = [], [], now
                cut = chunk.rfind("\n\n")
                block = len(chunk) - cut - 2 if cut >= 0 else block + len(chunk)
                interval = flush_interval(block, flush_seconds)
        elif isinstance(ev, StatsEvent):
            post(StatsUpdated(target, ev.stats, engine.context_used()))
        elif isinstance(ev, FinishedEvent):
            result = ev
    if spans:
        post(TokensArrived(target, "".join(text), spans))
    assert result is not None
    post(GenerationFinished(target, result, engine.context_used()))
    return result


def _stronger(a: float | None, b: float | None) -> float | None:
    """The larger-magnitude delta (pieces merged into one visible span keep the strongest)."""
    if a is None or b is None:
        return b if a is None else a
    return a if abs(a) > abs(b) else b
