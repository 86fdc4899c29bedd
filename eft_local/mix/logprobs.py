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


def log_normalizer(z: np.ndarray) -> float:
    """log Σ exp(z) in float64 accumulation (−inf entries contribute nothing)."""
    zmax = float(z.max())
    return zmax + math.log(float(np.exp(z - np.float32(zmax)).sum(dtype=np.float64)))


def token_logprobs(z: np.ndarray, token: int, k: int = 0) -> TokenLogprob:
    """``token``'s log-probability under softmax(z) and the top ``k`` alternatives."""
    lse = log_normalizer(z)
    best = int(np.argmax(z))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, len(z))
        ids = np.argpartition(z, -k)[-k:]
        ids = ids[np.argsort(-z[ids], kind="stable")]
        top = tuple((int(i), float(z[i]) - lse) for i in ids)
    return TokenLogprob(int(token), float(z[token]) - lse, top, is_greedy=float(z[token]) == float(z[best]))
