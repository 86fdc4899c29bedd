"""Timed runs shared by the benchmark scripts: one model alone, and an EFT engine."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent
from eft_local.llama.adapter import LlamaModel
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import distribution, sample

PROMPT = "hello world the answer to the question is"


@dataclass
class Result:
    tps: float
    n_tokens: int
    acceptance: float | None = None
    ms_per_token: float = 0.0
    token_ids: tuple[int, ...] = ()
    mean_k: float | None = None
    total_ms_per_token: float = 0.0  # prompt (re)evaluation included
    positions: int = 0  # logit rows the verifiers produced (k + 1 per speculative round)


def plain_run(
    model: LlamaModel, prompt: list[int], n: int, params: SamplingParams, n_vocab: int, rng: np.random.Generator
) -> Result:
    """One model alone, no EFT machinery: eval one token, pick the next, repeat."""
    model.rollback(0)
    row = model.eval(prompt, 1)[0]
    ids = []
    t0 = time.perf_counter()
    for _ in range(n):
        z = row[:n_vocab]
        tok = int(np.argmax(z)) if params.temperature == 0 else sample(distribution(z, params), rng.random())
        ids.append(tok)
        row = model.eval([tok], 1)[0]
    dt = time.perf_counter() - t0
    return Result(n / dt, n, ms_per_token=dt / n * 1e3, token_ids=tuple(ids))


def eft_run(engine: EftEngine, prompt: dict, n: int, params: SamplingParams, k: int | None, seed: int) -> Result:
    cfg = GenerationConfig(sampling=params, max_tokens=n, draft_tokens=k, stats_interval=1e9)
    fin = None
    for ev in engine.generate(prompt, cfg, np.random.default_rng(seed)):
        if isinstance(ev, FinishedEvent):
            fin = ev
    if fin is None or fin.reason == "error":
        raise SystemExit(f"generation failed: {fin.error if fin else 'no FinishedEvent'}")
    s = fin.stats
    mean_k = s.drafted / s.rounds if s.rounds else None
    return Result(
        s.tokens_per_second,
        s.n_tokens,
        s.acceptance,
        s.decode_seconds / max(s.n_tokens, 1) * 1e3,
        tuple(fin.token_ids),
        mean_k,
        s.seconds / max(s.n_tokens, 1) * 1e3,
        s.drafted + s.rounds + max(0, s.n_tokens - s.accepted - s.rounds),
    )
