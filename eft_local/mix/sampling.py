"""EFT combination and sampling: pure NumPy over logit arrays, no model needed.

A filtered next-token distribution is kept *sparse* (``Dist``: candidate ids + probs).
Tokens whose tempered logit lies more than ``T·(ln V + 20)`` below the maximum carry
less total mass than float32 can represent next to 1, so dropping them is exact to
float precision and leaves only a handful of candidates to exponentiate — this is what
keeps a 152k-vocabulary step well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from eft_local.mix.filters import _TINY_T, FILTERS, Candidates, candidates, nucleus
from eft_local.mix.params import SamplingParams

__all__ = ["Dist", "combine", "distribution", "eft_distribution", "proposal", "sample"]


class Dist:
    """A probability distribution over token ids, kept as unnormalized weights.

    Sparse (``ids`` given: weights for those ids, usually by descending probability) when a
    filter cut the support down, dense (``ids is None``: ``w[i]`` is token i's weight) when
    every token keeps some mass — building a sparse list of 152k ids would cost more than
    the whole step.
    """

    __slots__ = ("ids", "w", "total")

    def __init__(self, ids: np.ndarray | None, w: np.ndarray, total: float | None = None) -> None:
        self.ids = ids
        self.w = w
        self.total = float(w.sum()) if total is None else float(total)

    @property
    def probs(self) -> np.ndarray:
        return self.w / self.total

    def prob(self, token: int) -> float:
        if self.ids is None:
            return float(self.w[token]) / self.total if 0 <= token < len(self.w) else 0.0
        hit = np.flatnonzero(self.ids == token)
        return float(self.w[hit[0]]) / self.total if hit.size else 0.0

    @property
    def argmax(self) -> int:
        i = int(np.argmax(self.w))
        return i if self.ids is None else int(self.ids[i])

    def dense(self, n: int) -> np.ndarray:
        """Probabilities as a float64 array over ids 0..n-1."""
        out = np.zeros(n)
        if self.ids is None:
            out[: len(self.w)] = self.w / self.total
        else:
            out[self.ids] = self.w / self.total
        return out


def combine(
    rows: Sequence[np.ndarray], weights: Sequence[float], out: np.ndarray | None = None, scratch: np.ndarray | None = None
) -> np.ndarray:
    """``z = Σ weights[m] · rows[m]`` over the rows' common length, in float32.

    The EFT formula expanded per model (see ``EftEngine.coefficients``). Rows may be longer
    than ``out`` (padded vocabularies): only the first ``len(out)`` entries are used. Zero
    weights are skipped and ±1 add/subtract without a multiply, so a corner (one model with
    weight 1) is that model's row exactly. ``scratch`` (like ``out``) holds the weighted
    terms instead of a temporary per term: the same float32 operations, so the same result.
    A first pair of weight 1 and ±1 (base − reference at β = 1) is one ufunc into ``out``
    rather than a copy and then an in-place one: the same rounding, one 600 kB pass less at
    152k ids (rows fresh from llama.cpp are not in cache: −0.05 ms per position measured).
    """
    n = len(out) if out is not None else min(len(r) for r in rows)
    out = np.empty(n, np.float32) if out is None else out
    terms = [(float(w), x) for w, x in zip(weights, rows) if w != 0.0]
    if not terms:
        out[:] = 0.0
        return out
    w0, x0 = terms[0]
    rest = terms[1:]
    if w0 == 1.0 and rest and abs(rest[0][0]) == 1.0:  # x0 ± x1 straight into out: a pass less
        (np.add if rest[0][0] == 1.0 else np.subtract)(x0[:n], rest[0][1][:n], out=out)
        rest = rest[1:]
    elif w0 == 1.0:
        np.copyto(out, x0[:n])
    else:
        np.multiply(x0[:n], np.float32(w0), out=out)
    for w, x in rest:
        if w == 1.0:
            np.add(out, x[:n], out=out)
        elif w == -1.0:
            np.subtract(out, x[:n], out=out)
        elif scratch is not None:
            out += np.multiply(x[:n], np.float32(w), out=scratch[:n])
        else:
            out += np.float32(w) * x[:n]
    return out


def three_roles(
    base: np.ndarray, chat: np.ndarray, reference: np.ndarray, alpha: float, beta: float
) -> tuple[list[np.ndarray], list[float]]:
    """Rows and weights of the one-delta formula ``ref + α(chat − ref) + β(base − ref)``."""
    return [chat, base, reference], [alpha, beta, 1.0 - alpha - beta]


_BLOCK = 1024  # dense sampling: cumsum over block sums, then inside one block


def distribution(z: np.ndarray, params: SamplingParams, allowed: np.ndarray | None = None) -> Dist:
    """The filtered next-token distribution of logits ``z``.

    Temperature 0 is greedy; otherwise ``filters.FILTERS`` in order (min-p relative to the
    top token, top-k, typical-p, top-p), each on the renormalized result of the previous
    one. ``allowed`` (ids) restricts the support first (the base-nucleus top-p mode; top-p
    is then not reapplied).
    """
    if allowed is not None:
        zz = z[allowed]
        if params.temperature == 0:
            return Dist(allowed[[int(np.argmax(zz))]], np.ones(1))
        d = _filtered(zz, replace(params, top_p=1.0))
        return Dist(allowed if d.ids is None else allowed[d.ids], d.w, d.total)
    if params.temperature == 0:
        return Dist(np.array([int(np.argmax(z))]), np.ones(1))
    return _filtered(z, params)


def _filtered(z: np.ndarray, params: SamplingParams) -> Dist:
    c = candidates(z, params.temperature, params)
    for f in FILTERS:
        c = f(c, params)
    return Dist(None, c.w, c.known_mass) if c.ids is None else Dist(c.ids, c.w.astype(np.float64))


PROPOSAL_DEPTH = 10.0  # a proposal's ids: within T·10 of the drafter's top (weight ≥ e^-10 of the top's)
_PROPOSAL_MAX = 8192  # a broader head: the drafter's whole filtered distribution instead


def proposal(z: np.ndarray, params: SamplingParams, mask: np.ndarray | None = None) -> Dist:
    """A draft distribution q from the drafter's row ``z``: cheap, and exact to use whatever it is.

    Speculative sampling leaves the output distributed exactly as p for *any* proposal q
    (a point mass included), so q need not be the drafter's full filtered distribution:
    this one is that distribution over the ids within ``T·PROPOSAL_DEPTH`` of the drafter's
    top (the filters applied to that head) — one comparison pass instead of a full-row
    softmax, and nearly the same acceptance (the ids left out weigh < e^-10 each).
    Temperature 0 is the point mass at the argmax. Masked ids are never proposed.
    """
    if mask is not None and mask.size and (params.temperature == 0 or bool(np.any(mask == np.argmax(z)))):
        z = z.copy()
        z[mask] = -np.inf
        mask = None
    if params.temperature == 0:
        return Dist(np.array([int(np.argmax(z))]), np.ones(1))
    top = float(z.max())
    t = params.temperature
    head = np.flatnonzero(z >= np.float32(top - t * PROPOSAL_DEPTH)) if t >= _TINY_T else np.array([])
    if mask is not None and mask.size:
        head = head[~np.isin(head, mask)]
    if not 0 < len(head) <= _PROPOSAL_MAX:  # a broad row (or a tiny T): the full filtered distribution
        if mask is not None and mask.size:
            z = z.copy()
            z[mask] = -np.inf
        return _filtered(z, params)
    e = z[head] - np.float32(top)
    e *= np.float32(1.0 / t)
    c = Candidates(head, np.exp(e, out=e))
    for f in FILTERS:
        c = f(c, params)
    return Dist(c.ids, c.w.astype(np.float64))


def base_nucleus_needed(params: SamplingParams) -> bool:
    """The DExperts top-p mode samples inside the base model's own nucleus (so the base must run)."""
    return params.top_p_mode == "base" and params.top_p < 1.0 and params.temperature > 0


def base_nucleus(base: np.ndarray, n: int, params: SamplingParams) -> np.ndarray | None:
    """Sorted ids of the base model's top-p nucleus (DExperts mode), else None."""
    if not base_nucleus_needed(params):
        return None
    c = nucleus(candidates(base[:n], params.temperature), params.top_p)
    return np.flatnonzero(c.w) if c.ids is None else np.sort(c.ids)


def eft_distribution(
    rows: Sequence[np.ndarray],
    weights: Sequence[float],
    params: SamplingParams,
    n: int,
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
    base: np.ndarray | None = None,
) -> Dist:
    """One full EFT step: combine the models' rows over the first ``n`` ids, then filter.

    ``mask`` holds ids that must never be emitted (padding/unused tokens): set to -inf.
    ``base`` is the large base model's row, needed only by the DExperts top-p mode.
    """
    z = combine(rows, weights, out if out is not None else np.empty(n, np.float32))
    if mask is not None and mask.size:
        z[mask] = -np.inf
    allowed = base_nucleus(base, n, params) if base is not None else None
    return distribution(z, params, allowed)


def sample(dist: Dist, u: float) -> int:
    """The id at uniform ``u`` ∈ [0, 1) of ``dist``'s CDF (inverse-CDF sampling).

    Long weight lists (dense rows, broad nuclei) are searched in two levels (block sums,
    then one block): a cumulative sum runs at ~3 ns per entry, 0.1 ms for a 30k-id nucleus.
    """
    i = _inverse_cdf(dist.w, u)
    return int(dist.ids[i]) if dist.ids is not None else i


def _inverse_cdf(w: np.ndarray, u: float) -> int:
    """Position at uniform ``u`` of the CDF of weights ``w``."""
    if len(w) == 1:
        return 0
    if len(w) <= _BLOCK:
        c = np.cumsum(w, dtype=np.float64)
        return min(int(np.searchsorted(c, u * c[-1], side="right")), len(c) - 1)
    n_full = len(w) // _BLOCK * _BLOCK
    sums = w[:n_full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    if n_full < len(w):
        sums = np.append(sums, w[n_full:].sum(dtype=np.float64))
    c = np.cumsum(sums)
    target = u * c[-1]
    b = min(int(np.searchsorted(c, target, side="right")), len(c) - 1)
    while sums[b] == 0:  # float edge: landed on an empty block
        b -= 1
    inner = np.cumsum(w[b * _BLOCK : (b + 1) * _BLOCK], dtype=np.float64)
    rest = target - (c[b - 1] if b else 0.0)
    i = min(int(np.searchsorted(inner, rest, side="right")), len(inner) - 1)
    while i and inner[i] == inner[i - 1]:  # float edge: clipped onto a weightless id
        i -= 1
    return b * _BLOCK + i


def residual(p: Dist, q: Dist) -> Dist:
    """``norm(max(0, p − q))``: where to resample after the draft token was rejected.

    Exact for any proposal q. A point mass at x (a greedy draft) leaves p without x; a
    sparse q against a dense p changes only q's ids (no dense float64 rows).
    """
    if q.ids is not None and len(q.ids) == 1:
        return _without(p, int(q.ids[0]))
    if p.ids is None and q.ids is not None:
        w = p.w.copy()
        inside = q.ids < len(w)
        ids = q.ids[inside]
        w[ids] = np.maximum(p.w[ids] - q.probs[inside] * p.total, 0.0)
        total = p.total - float(p.w[ids].sum(dtype=np.float64)) + float(w[ids].sum(dtype=np.float64))
        return p if total <= 0.0 else Dist(None, w, total)
    if p.ids is None or q.ids is None:
        n = max(len(d.w) if d.ids is None else int(d.ids.max()) + 1 for d in (p, q))
        r = np.maximum(p.dense(n) - q.dense(n), 0.0)
        total = float(r.sum())
        return p if total <= 0.0 else Dist(None, r, total)
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
    return Dist(ids[keep], r[keep], total)


def _without(p: Dist, token: int) -> Dist:
    """p conditioned on not being ``token`` (p itself when nothing else has mass)."""
    if p.ids is None:
        if not 0 <= token < len(p.w) or p.w[token] == 0:
            return p
        w = p.w.copy()
        w[token] = 0.0
        total = p.total - float(p.w[token])
    else:
        keep = p.ids != token
        w = p.w[keep]
        total = float(w.sum(dtype=np.float64))
        if total > 0.0:
            return Dist(p.ids[keep], w, total)
    return p if total <= 0.0 else Dist(None, w, total)


def accept(p: Dist, q: Dist, token: int, u: float) -> bool:
    """Speculative acceptance test with uniform ``u``: keep ``token`` (drawn from q) w.p. min(1, p/q)."""
    pt, qt = p.prob(token), q.prob(token)
    return pt >= qt or u * qt < pt


def token_logprob(logits: np.ndarray, token: int, n: int) -> float:
    """log softmax(logits[:n])[token] at temperature 1 (float32 sum: display precision)."""
    row = logits[:n]
    zmax = np.float32(row.max())
    lse = float(zmax) + math.log(float(np.exp(row - zmax).sum(dtype=np.float64)))
    return float(row[token]) - lse
