#!/usr/bin/env python
"""Cost of EFT scoring (``eft_local.engine.scoring``): NumPy per position, and end to end.

1. NumPy per scored position at 151,936 ids (Qwen2.5's vocabulary): combine three rows
   with EFT weights, mask, log-softmax, top-k — one thread, then every lane
   (``SCORING_THREADS``). Target: ≤ 0.3 ms per position.
2. End to end on a synthetic family with the same vocabulary size: tokens scored per
   second (every position's logits from every model, combined) vs the three models'
   batched prefill of the same tokens alone — with the last position's logits only (the
   issue's goal: ≥ 0.8×), and with every position's logits (what scoring must compute in
   llama.cpp anyway; the gap to it is this code's own cost). The synthetic models are tiny
   bodies under a 152k-row output layer, so computing every position's logits dominates
   here far more than in a real model (Qwen2.5-0.5B: the output layer is ~27% of the
   weights, 7B: ~7%).

Run: ``.venv/bin/python scripts/bench_score.py [--tokens 512] [--iters 200]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from eft_local.engine import scoring
from eft_local.engine.decoder import EftEngine
from eft_local.engine.scoring import _combine_chunk, _Lane, score_tokens
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.mix.params import SamplingParams

N_VOCAB = 151_936
TARGET_MS = 0.3
PARAMS = SamplingParams(alpha=0.8, beta=1.5)  # every model weighted, none by ±1: the slowest combine


def llm_rows(n_pos: int, rng: np.random.Generator) -> np.ndarray:
    """Rows shaped like a real model's: a N(0, 2.5) bulk and a few head tokens far above it."""
    rows = (rng.standard_normal((n_pos, N_VOCAB), dtype=np.float32) * 2.5).astype(np.float32)
    for r in rows:
        r[rng.choice(N_VOCAB, 8, replace=False)] += rng.uniform(12.0, 20.0, 8).astype(np.float32)
    return rows


def bench_numpy(iters: int, top_k: int) -> None:
    rng = np.random.default_rng(0)
    n_pos = 64
    rows = [llm_rows(n_pos, rng) for _ in range(3)]
    weights = [1.5, 0.8, -1.3]  # base β, chat α, reference 1 − α − β
    tokens = [int(t) for t in rng.integers(0, N_VOCAB, n_pos)]
    mask = np.arange(N_VOCAB - 100, N_VOCAB)
    for threads in sorted({1, scoring.SCORING_THREADS}):
        lanes = [_Lane(N_VOCAB, mask) for _ in range(threads)]
        _combine_chunk(lanes, rows, weights, tokens, top_k)  # warm-up
        t0 = time.perf_counter()
        reps = max(1, iters // n_pos)
        for _ in range(reps):
            _combine_chunk(lanes, rows, weights, tokens, top_k)
        ms = (time.perf_counter() - t0) / (reps * n_pos) * 1e3
        verdict = "ok" if ms <= TARGET_MS else "over"
        print(f"numpy  top_k={top_k} threads={threads}: {ms:.3f} ms/position (target {TARGET_MS} ms: {verdict})")


def bench_end_to_end(n_tokens: int, n_threads: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        shape = ModelSpec(n_vocab=N_VOCAB, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=512)
        fam = write_family(Path(d), shape=shape, extra_layers=8)
        engine = EftEngine.load(fam.paths(), n_ctx=max(1024, n_tokens + 16), n_threads=n_threads)
        try:
            rng = np.random.default_rng(1)
            ids = [1] + [int(t) for t in rng.integers(300, N_VOCAB, n_tokens - 1)]
            seqs = {name: ids for name in engine.models}
            prefill, prefill_all, scored = [], [], []
            for _ in range(3):
                for times, every in ((prefill, False), (prefill_all, True)):
                    engine.reset()
                    t0 = time.perf_counter()
                    for m in engine.models.values():
                        for i in range(0, len(ids), m.n_batch):
                            part = ids[i : i + m.n_batch]
                            m.eval(part, len(part) if every else 1)
                    times.append(time.perf_counter() - t0)
                engine.reset()
                t0 = time.perf_counter()
                score_tokens(engine, seqs, len(ids) - 1, PARAMS, top_k=1)
                scored.append(time.perf_counter() - t0)
            p, pa, s = min(prefill), min(prefill_all), min(scored)
            print(
                f"end to end, {n_tokens} tokens, 3 models at {N_VOCAB} ids: scoring {n_tokens / s:.0f} tok/s; "
                f"prefill alone {n_tokens / p:.0f} tok/s (scoring = {p / s:.2f}x, goal >= 0.8x); "
                f"prefill with every position's logits {n_tokens / pa:.0f} tok/s (scoring = {pa / s:.2f}x)"
            )
        finally:
            engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--iters", type=int, default=256, help="positions timed per NumPy case")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads per model")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    for k in (0, 1, 5):
        bench_numpy(args.iters, k)
    if not args.skip_e2e:
        bench_end_to_end(args.tokens, args.threads)


if __name__ == "__main__":
    main()
