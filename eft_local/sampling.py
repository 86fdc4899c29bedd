"""EFT combination and sampling: pure NumPy over logit arrays, no model needed.

A filtered next-token distribution is kept *sparse* (``Dist``: candidate ids + probs).
Tokens whose tempered logit lies more than ``T·(ln V + 20)`` below the maximum carry
less total mass than float32 can represent next to 1, so dropping them is exact to
float precision and leaves only a handful of candidates to exponentiate — this is what
keeps a 152k-vocabulary step well under a millisecond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOP_P_MODES = ("eft", "base")


@dataclass(frozen=True)
class SamplingParams:
    """How one EFT step turns three logit rows into a distribution.

    ``top_p_mode="eft"`` applies top-p to the EFT distribution itself (the paper's
    "conservative decoding"); ``"base"`` is DExperts-style: the nucleus is taken from the
    base model alone and the EFT distribution is restricted to it.
    """

    alpha: float = 1.0
    beta: float = 1.0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_p_mode: str = "eft"

    def validate(self) -> None:
        from .errors import UserError

        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise UserError(f"--min-p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p_mode not in TOP_P_MODES:
            raise UserError(f"--top-p-mode must be one of {', '.join(TOP_P_MODES)}, got {self.top_p_mode!r}")


@dataclass
class Dist:
    """A sparse probability distribution over token ids (probs sum to 1, float64)."""

    ids: np.ndarray
    probs: np.ndarray

    def prob(self, token: int) -> float:
        hit = np.flatnonzero(self.ids == token)
        return float(self.probs[hit[0]]) if hit.size else 0.0

    @property
    def argmax(self) -> int:
        return int(self.ids[int(np.argmax(self.probs))])


def combine(
    base: np.ndarray,
    chat: np.ndarray,
    reference: np.ndarray,
    alpha: float,
    beta: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``z = ref + α(chat − ref) + β(base − ref)`` over the rows' common length, in float32.

    Inputs may be longer than ``out`` (padded vocabularies): only the first ``len(out)``
    entries are used. Written as ``α·chat + β·base + (1−α−β)·ref`` to touch memory once
    per term; exact corners (α,β) ∈ {0,1}² skip the zero terms.
    """
    n = len(out) if out is not None else min(len(base), len(chat), len(reference))
    out = np.empty(n, np.float32) if out is None else out
    terms = [(alpha, chat[:n]), (beta, base[:n]), (1.0 - alpha - beta, reference[:n])]
    terms = [(w, x) for w, x in terms if w != 0.0]
    if not terms:
        out[:] = 0.0
        return out
    w0, x0 = terms[0]
    np.multiply(x0, np.float32(w0), out=out) if w0 != 1.0 else np.copyto(out, x0)
    for w, x in terms[1:]:
        if w == 1.0:
            np.add(out, x, out=out)
        elif w == -1.0:
            np.subtract(out, x, out=out)
        else:
            out += np.float32(w) * x
    return out


def _gap(n_vocab: int, temperature: float) -> float:
    """Logit distance below the max beyond which tokens can't matter in float32 (see module doc)."""
    return temperature * (math.log(max(n_vocab, 2)) + 20.0)


def _candidates(z: np.ndarray, temperature: float, min_p: float) -> np.ndarray:
    zmax = float(z.max())
    gap = _gap(len(z), temperature)
    if min_p > 0:
        gap = min(gap, -temperature * math.log(min_p))
    return np.flatnonzero(z >= zmax - gap)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    x = logits.astype(np.float64) / temperature
    x -= x.max()
    np.exp(x, out=x)
    x /= x.sum()
    return x


def _top_p_keep(probs_sorted: np.ndarray, top_p: float) -> int:
    """How many of the descending-sorted probs form the nucleus (the crossing token included)."""
    if top_p >= 1.0:
        return len(probs_sorted)
    c = np.cumsum(probs_sorted)
    return int(min(len(c), np.searchsorted(c, top_p * c[-1], side="left") + 1))


def distribution(z: np.ndarray, params: SamplingParams, allowed: np.ndarray | None = None) -> Dist:
    """The filtered next-token distribution of logits ``z``.

    Order: temperature, min-p (relative to the top token), top-k, top-p (each on the
    renormalized result of the previous one). ``allowed`` (sorted ids) restricts the
    support first (used by the base-nucleus top-p mode). Temperature 0 is greedy.
    """
    if allowed is not None:
        zz = z[allowed]
        if params.temperature == 0:
            return Dist(allowed[[int(np.argmax(zz))]], np.ones(1))
        sub = _candidates(zz, params.temperature, params.min_p)
        ids, logits = allowed[sub], zz[sub]
    else:
        if params.temperature == 0:
            return Dist(np.array([int(np.argmax(z))]), np.ones(1))
        ids = _candidates(z, params.temperature, params.min_p)
        logits = z[ids]
    order = np.argsort(-logits, kind="stable")
    ids, logits = ids[order], logits[order]
    if params.top_k and params.top_k < len(ids):
        ids, logits = ids[: params.top_k], logits[: params.top_k]
    probs = _softmax(logits, params.temperature)
    keep = _top_p_keep(probs, params.top_p) if params.top_p_mode == "eft" else len(probs)
    ids, probs = ids[:keep], probs[:keep]
    return Dist(ids, probs / probs.sum())


def base_nucleus(base: np.ndarray, n: int, params: SamplingParams) -> np.ndarray | None:
    """Sorted ids of the base model's top-p nucleus (DExperts mode), else None."""
    if params.top_p_mode != "base" or params.top_p >= 1.0 or params.temperature == 0:
        return None
    row = base[:n]
    ids = _candidates(row, params.temperature, 0.0)
    logits = row[ids]
    order = np.argsort(-logits, kind="stable")
    probs = _softmax(logits[order], params.temperature)
    keep = _top_p_keep(probs, params.top_p)
    return np.sort(ids[order][:keep])


def eft_distribution(
    base: np.ndarray,
    chat: np.ndarray,
    reference: np.ndarray,
    params: SamplingParams,
    n: int,
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> Dist:
    """One full EFT step: combine the three rows over the first ``n`` ids, then filter.

    ``mask`` holds ids that must never be emitted (padding/unused tokens): set to -inf.
    """
    z = combine(base, chat, reference, params.alpha, params.beta, out if out is not None else np.empty(n, np.float32))
    if mask is not None and mask.size:
        z[mask] = -np.inf
    return distribution(z, params, base_nucleus(base, n, params))


def sample(dist: Dist, u: float) -> int:
    """The id at uniform ``u`` ∈ [0, 1) of ``dist``'s CDF (inverse-CDF sampling)."""
    if len(dist.ids) == 1:
        return int(dist.ids[0])
    c = np.cumsum(dist.probs)
    i = int(np.searchsorted(c, u * c[-1], side="right"))
    return int(dist.ids[min(i, len(c) - 1)])


def residual(p: Dist, q: Dist) -> Dist:
    """``norm(max(0, p − q))``: where to resample after the draft token was rejected."""
    ids = np.union1d(p.ids, q.ids)
    pp = np.zeros(len(ids))
    qq = np.zeros(len(ids))
    pp[np.searchsorted(ids, p.ids)] = p.probs
    qq[np.searchsorted(ids, q.ids)] = q.probs
    r = np.maximum(pp - qq, 0.0)
    total = r.sum()
    if total <= 0.0:  # p == q to float precision: any rejection was a rounding fluke
        return p
    keep = r > 0
    return Dist(ids[keep], r[keep] / total)


def accept(p: Dist, q: Dist, token: int, u: float) -> bool:
    """Speculative acceptance test with uniform ``u``: keep ``token`` (drawn from q) w.p. min(1, p/q)."""
    pt, qt = p.prob(token), q.prob(token)
    return pt >= qt or u * qt < pt


def token_logprob(logits: np.ndarray, token: int, n: int) -> float:
    """log softmax(logits[:n])[token] at temperature 1, using the same exact pruning."""
    row = logits[:n]
    zmax = float(row.max())
    near = row[row >= zmax - _gap(n, 1.0)].astype(np.float64)
    return float(row[token]) - zmax - math.log(np.exp(near - zmax).sum())
