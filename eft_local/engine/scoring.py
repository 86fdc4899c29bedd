"""EFT log-probabilities of given token sequences (echo, ``eft-local score``, lm-eval).

For each scored position the models' logit rows are combined with the very weights the
decoder uses (``EftEngine.coefficients`` → ``mix.sampling.combine``, padding ids masked),
then log-softmaxed at T = 1 with no filters (``mix.logprobs``).

Cost and memory: the part of a sequence before the first scored position is prefilled
(reusing whatever each model's cache already holds, so a prompt shared by several
continuations is evaluated once per model); the scored part goes through every model in
decode chunks of ``n_batch`` tokens, and each chunk's rows are consumed before the next
decode — never more than one chunk of logits per model (a 4k-token echo at 152k ids would
otherwise be 2.4 GB per model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from eft_local.engine.decoder import EftEngine
from eft_local.errors import Cancelled, UserError
from eft_local.mix.logprobs import TokenLogprob, token_logprobs
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import combine


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
    seqs = {name: list(tokens[name]) for name, _ in weighted}
    _check(engine, seqs, n_scored)
    scored = next(iter(seqs.values()))[-n_scored:]
    for name, seq in seqs.items():
        _prefill_before(engine, name, seq[: len(seq) - n_scored - 1], cancel)
    chunk = min(engine.models[name].n_batch for name in seqs)
    z = np.empty(engine.vocab.n, np.float32)
    mask = engine.vocab.masked
    out: list[TokenLogprob] = []
    for start in range(0, n_scored, chunk):
        if cancel is not None and cancel():
            raise Cancelled
        rows = []
        for name, seq in seqs.items():
            first = len(seq) - n_scored - 1 + start  # position whose logits predict scored[start]
            part = seq[first : first + min(chunk, n_scored - start)]
            rows.append(engine.models[name].eval(part, len(part)))
        for i in range(len(rows[0])):
            combine([r[i] for r in rows], [w for _, w in weighted], z)
            if mask.size:
                z[mask] = -np.inf
            out.append(token_logprobs(z, scored[start + i], top_k))
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
            raise UserError(
                f"{len(seq)} tokens to score for {name} but the context holds {model.n_ctx + 1}; "
                "shorten the text or raise --n-ctx"
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
