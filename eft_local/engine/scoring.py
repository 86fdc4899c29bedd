"""EFT log-probabilities of given token sequences (echo, ``eft-local score``, lm-eval).

For each scored position the models' logit rows are combined with the very weights the
decoder uses (``EftEngine.coefficients`` → ``mix.sampling.combine``, padding ids masked),
then log-softmaxed at T = 1 with no filters (``mix.logprobs``).

Cost and memory: the part of a sequence before the first scored position is prefilled
(reusing whatever each model's cache already holds, so a prompt shared by several
continuations is evaluated once per model); the scored part goes through every model in
decode chunks of ``n_batch`` tokens, and each chunk's rows are consumed before the next
decode — never more than one chunk of logits per model (a 4k-token echo at 152k ids would
otherwise be 2.4 GB per model). The positions of a chunk are combined on several threads
(NumPy releases the GIL in its loops; llama.cpp's threads are idle meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from eft_local.engine.eft_engine import EftEngine
from eft_local.errors import Cancelled, UserError
from eft_local.mix.logprobs import TokenLogprob, token_logprobs
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import combine
from eft_local.settings import Fixable


def weighted_models(engine: EftEngine, params: SamplingParams) -> list[tuple[str, float]]:
    """(model name, weight) of every model that counts for ``params`` (as the decoder plans it)."""
    engine.check_weights(params)
    return [(name, w) for name, w in engine.coefficients(params).items() if w != 0.0]


def score_tokens(
    engine: EftEngine,
    tokens: Mapping[str, Sequence[int]],
    n_scored: int,
    params: SamplingParams,
    top_k: int = 0,
    cancel: Callable[[], bool] | None = None,
) -> list[TokenLogprob]:
    """Log-probabilities of the last ``n_scored`` ids of each model's sequence ``tokens[name]``.

    The scored ids are the same in every model (a continuation, or an echoed prompt); what
    precedes them may differ per model (each role's own prompt). Each model's cache ends
    holding its sequence minus the last id, so a generation from the same prompt reuses it.
    """
    weighted = weighted_models(engine, params)
    weights = [w for _, w in weighted]
    seqs = {name: list(tokens[name]) for name, _ in weighted}
    _check(engine, seqs, n_scored)
    scored = next(iter(seqs.values()))[-n_scored:]
    for name, seq in seqs.items():
        _prefill_before(engine, name, seq[: len(seq) - n_scored - 1], cancel)
    chunk = min(engine.models[name].n_batch for name in seqs)
    out: list[TokenLogprob] = []
    threads = SCORING_THREADS if n_scored >= MIN_POSITIONS_PER_THREAD * 2 else 1
    lanes = [_Lane(engine.vocab.n, engine.vocab.masked) for _ in range(threads)]
    for start in range(0, n_scored, chunk):
        if cancel is not None and cancel():
            raise Cancelled
        rows = []
        for name, seq in seqs.items():
            first = len(seq) - n_scored - 1 + start  # position whose logits predict scored[start]
            part = seq[first : first + min(chunk, n_scored - start)]
            rows.append(engine.models[name].eval(part, len(part)))
        out.extend(_combine_chunk(lanes, rows, weights, scored[start : start + len(rows[0])], top_k))
    return out


# Every logical CPU (up to 8): llama.cpp's threads are idle while a chunk's rows are combined,
# and the work is memory-bound. On a quiet 2-core machine 2 lanes took 0.26-0.32 ms per position
# against 0.40-0.52 for one; only when other jobs already held the cores were they slower.
SCORING_THREADS = min(8, os.cpu_count() or 1)
MIN_POSITIONS_PER_THREAD = 8  # below this a thread hand-off costs more than it saves
_pool: ThreadPoolExecutor | None = None


def _combine_chunk(
    lanes: list[_Lane], rows: list[np.ndarray], weights: list[float], tokens: list[int], top_k: int
) -> list[TokenLogprob]:
    """Every position of one chunk, split over the lanes (threads) in contiguous spans."""
    global _pool
    n = len(tokens)
    k = max(1, min(len(lanes), n // MIN_POSITIONS_PER_THREAD))
    spans = [range(j * n // k, (j + 1) * n // k) for j in range(k)]
    if k == 1:
        return lanes[0].run(rows, weights, tokens, spans[0], top_k)
    if _pool is None:
        _pool = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="eft-score")
    jobs = [_pool.submit(lane.run, rows, weights, tokens, span, top_k) for lane, span in zip(lanes, spans)]
    return [lp for job in jobs for lp in job.result()]  # in order: lane j holds span j


class _Lane:
    """One thread's buffers: z, the weighted-term scratch, the exp workspace."""

    def __init__(self, n: int, mask: np.ndarray) -> None:
        self.z, self.scratch, self.work = (np.empty(n, np.float32) for _ in range(3))
        self.mask = mask

    def run(self, rows: list[np.ndarray], weights: list[float], tokens: list[int], span: range, top_k: int) -> list[TokenLogprob]:
        out = []
        for i in span:
            combine([r[i] for r in rows], weights, self.z, self.scratch)
            if self.mask.size:
                self.z[self.mask] = -np.inf
            out.append(token_logprobs(self.z, tokens[i], top_k, self.work))
        return out


def _check(engine: EftEngine, seqs: Mapping[str, list[int]], n_scored: int) -> None:
    if n_scored < 1:
        raise UserError("nothing to score: the continuation is empty")
    tails = {tuple(seq[-n_scored:]) for seq in seqs.values()}
    if len(tails) != 1:
        raise ValueError("the scored ids must be the same in every model")
    for name, seq in seqs.items():
        model = engine.models[name]
        if len(seq) <= n_scored:
            raise UserError("nothing to condition on: the first token of a sequence has no log-probability")
        if len(seq) - 1 > model.n_ctx:
            raise Fixable(
                f"{len(seq)} tokens to score for {name} but the context holds {model.n_ctx + 1}",
                "shorten the text or raise {n_ctx}",
            )
        bad = [t for t in seq if not 0 <= t < engine.vocab.n]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{engine.vocab.n - 1})")


def _prefill_before(engine: EftEngine, name: str, prefix: list[int], cancel: Callable[[], bool] | None) -> None:
    """Make the model's cache hold exactly ``prefix`` (no logits needed), reusing what it holds."""
    model = engine.models[name]
    common = 0
    for a, b in zip(model.tokens, prefix):
        if a != b:
            break
        common += 1
    if common < model.n_past and not model.supports_rollback:
        common = 0
    model.rollback(common)
    for i in range(common, len(prefix), model.n_batch):
        if cancel is not None and cancel():
            raise Cancelled
        model.eval(prefix[i : i + model.n_batch], 1)


def score_continuations(
    engine: EftEngine,
    prompt: Mapping[str, Sequence[int]],
    continuations: Sequence[Sequence[int]],
    params: SamplingParams,
    top_k: int = 0,
    cancel: Callable[[], bool] | None = None,
) -> list[list[TokenLogprob]]:
    """Each continuation after the shared prompt: the prompt is prefilled once per model,
    each continuation is one batched pass per model."""
    return [
        score_tokens(engine, {name: [*ids, *cont] for name, ids in prompt.items()}, len(cont), params, top_k, cancel)
        for cont in continuations
    ]
