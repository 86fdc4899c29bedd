"""Log-probabilities of the EFT distribution itself: log-softmax of z at T = 1, no filters.

This is what OpenAI and vLLM report as a model's log-probabilities (the model's own
distribution, not the sampler's), so evaluation harnesses score EFT mixes exactly as they
score a single model. Pure NumPy; ``z`` is an already combined (and masked) logit row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the chosen token's log-probability and the ``k`` most likely tokens.

    ``top`` holds (id, logprob) by descending logprob. The chosen token's value and its
    entry in ``top`` are computed by one expression, so an equality test (is_greedy) holds
    exactly when the token is the argmax.
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    is_greedy: bool = False


LOGPROB_FLOOR = -9999.0  # what an impossible token (−inf: a masked padding id) is reported as, as vLLM does
TOP_WINDOW = 4.0  # first look for the top k within this many nats of the maximum (widened if too few)


# With the maximum logit in this range exp(z) needs no shift: V·e^60 is far below float32's
# largest value (3.4e38) even at a million ids, and ids below −87 (where exp leaves float32's
# normal range) weigh under e^-67 of the top one. One pass less per position.
_UNSHIFTED_EXP = (-20.0, 60.0)


def log_normalizer(z: np.ndarray, zmax: float, work: np.ndarray | None = None) -> float:
    """log Σ exp(z) (−inf entries contribute nothing). ``work``: a buffer like ``z`` (no
    600 kB temporaries per position at 152k ids).

    The sum is NumPy's pairwise float32 sum: relative error ~log2(V)·2⁻²⁴ ≈ 1e-6, i.e. 1e-6
    nats, at a third of the cost of accumulating in float64. The exponentials are shifted
    by ``zmax`` only when the unshifted ones could overflow or lose the top's precision."""
    work = np.empty_like(z) if work is None else work
    if _UNSHIFTED_EXP[0] <= zmax <= _UNSHIFTED_EXP[1]:
        np.exp(z, out=work)
        return math.log(float(work.sum()))
    np.subtract(z, np.float32(zmax), out=work)
    np.exp(work, out=work)
    return zmax + math.log(float(work.sum()))


def top_ids(z: np.ndarray, zmax: float, k: int) -> np.ndarray:
    """The ``k`` largest entries' ids by descending value (ties: lower id first).

    Exact: every id left out of the window is below every id in it. Much cheaper than a
    partition of the whole row: a comparison pass, then a sort of a few candidates.
    """
    k = min(k, len(z))
    if k == 1:  # lm-eval's logprobs=1: the argmax (the first of tied maxima)
        return np.array([int(np.argmax(z))])
    width = TOP_WINDOW
    while True:
        ids = np.flatnonzero(z >= np.float32(zmax - width))
        if len(ids) >= k or not math.isfinite(zmax - width):
            break
        width = width * 2 if width < 1e4 else math.inf
    if len(ids) > 8 * k:  # a wide window: partition it first
        ids = ids[np.argpartition(z[ids], -k)[-k:]]
    return ids[np.lexsort((ids, -z[ids]))][:k]


def token_logprobs(z: np.ndarray, token: int, k: int = 0, work: np.ndarray | None = None) -> TokenLogprob:
    """``token``'s log-probability under softmax(z) and the top ``k`` alternatives."""
    if k == 1:  # lm-eval's logprobs=1: the argmax pass gives the maximum too
        best = int(np.argmax(z))
        zmax = float(z[best])
    else:
        zmax = float(z.max())
    lse = log_normalizer(z, zmax, work)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        ids = [best] if k == 1 else top_ids(z, zmax, k)
        top = tuple((int(i), _floor(float(z[i]) - lse)) for i in ids)
    return TokenLogprob(int(token), _floor(float(z[token]) - lse), top, is_greedy=float(z[token]) == zmax)


def _floor(logprob: float) -> float:
    """Finite for JSON: −inf (and nan, which the weight limits already rule out) become the floor."""
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR
