"""EFT combination and sampling: pure NumPy over logit arrays, no model needed.

A filtered next-token distribution is kept *sparse* (``Dist``: candidate ids + probs).
Tokens whose tempered logit lies more than ``T·(ln V + 20)`` below the maximum carry
less total mass than float32 can represent next to 1, so dropping them is exact to
float precision and leaves only a handful of candidates to exponentiate — this is what
keeps a 152k-vocabulary step well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .settings import TOP_P_MODES, check, check_weights

__all__ = ["TOP_P_MODES", "SamplingParams", "Dist", "combine", "distribution", "eft_distribution", "sample"]


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
    weights: Mapping[str, float] = field(default_factory=dict)  # α of every delta other than "chat"

    def validate(self) -> None:
        """Every value checked by its one definition in ``settings`` (finite, in range)."""
        for name in ("alpha", "beta", "temperature", "top_k", "top_p", "min_p", "top_p_mode"):
            check(name, getattr(self, name))
        check_weights(self.weights, "--weight")

    def weight(self, delta: str) -> float:
        """α of a behaviour delta: ``alpha`` for "chat", else ``weights`` (default 1)."""
        return self.alpha if delta == "chat" else float(self.weights.get(delta, 1.0))


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


def combine(rows: Sequence[np.ndarray], weights: Sequence[float], out: np.ndarray | None = None) -> np.ndarray:
    """``z = Σ weights[m] · rows[m]`` over the rows' common length, in float32.

    The EFT formula expanded per model (see ``EftEngine.coefficients``). Rows may be longer
    than ``out`` (padded vocabularies): only the first ``len(out)`` entries are used. Zero
    weights are skipped and ±1 add/subtract without a multiply, so a corner (one model with
    weight 1) is that model's row exactly.
    """
    n = len(out) if out is not None else min(len(r) for r in rows)
    out = np.empty(n, np.float32) if out is None else out
    terms = [(float(w), x) for w, x in zip(weights, rows) if w != 0.0]
    if not terms:
        out[:] = 0.0
        return out
    w0, x0 = terms[0]
    if w0 == 1.0:
        np.copyto(out, x0[:n])
    else:
        np.multiply(x0[:n], np.float32(w0), out=out)
    for w, x in terms[1:]:
        if w == 1.0:
            np.add(out, x[:n], out=out)
        elif w == -1.0:
            np.subtract(out, x[:n], out=out)
        else:
            out += np.float32(w) * x[:n]
    return out


def three_roles(base: np.ndarray, chat: np.ndarray, reference: np.ndarray, alpha: float, beta: float) -> tuple[list[np.ndarray], list[float]]:
    """Rows and weights of the one-delta formula ``ref + α(chat − ref) + β(base − ref)``."""
    return [chat, base, reference], [alpha, beta, 1.0 - alpha - beta]


# Descending weight thresholds tried when looking for a small set that holds the nucleus.
_THRESHOLDS = (1e-2, 1e-4, 1e-6, 1e-9, 1e-13, 1e-20)
_BLOCK = 1024  # dense sampling: cumsum over block sums, then inside one block
_SORT_LIMIT = 4096  # above this many top-p candidates, find the nucleus by histogram


def _weights(z: np.ndarray, temperature: float) -> np.ndarray:
    """exp((z − max) / T) in float32: the top token weighs 1, -inf weighs 0."""
    e = z - np.float32(z.max())
    e *= np.float32(1.0 / temperature)
    return np.exp(e, out=e)


def _head(e: np.ndarray, floor: float, enough: Callable[[np.ndarray], bool], sort: bool = True) -> np.ndarray:
    """Ids of the heaviest weights, a superset of what ``enough`` needs (sorted by weight).

    Tries ever lower thresholds (never below ``floor``) so that only a small set is sorted.
    """
    for t in _THRESHOLDS:  # descending; those at or below the floor are skipped
        if t > floor:
            idx = np.flatnonzero(e >= t)
            if enough(idx):
                break
    else:
        idx = np.flatnonzero(e >= floor) if floor > 0 else np.flatnonzero(e > 0)
    return idx[np.argsort(-e[idx], kind="stable")] if sort else idx


def _filter(z: np.ndarray, params: SamplingParams) -> Dist:
    """Temperature, min-p, top-k, top-p on one logit row (see ``distribution``)."""
    e = _weights(z, params.temperature)
    floor = params.min_p
    top_p = params.top_p if params.top_p_mode == "eft" else 1.0
    k = params.top_k if params.top_k and params.top_k < len(e) else 0
    if not k and top_p >= 1.0:
        if floor <= 0:
            return Dist(None, e)
        idx = np.flatnonzero(e >= floor)
        return Dist(idx, e[idx].astype(np.float64))
    if k:
        ids = _head(e, floor, lambda c: len(c) >= k)[:k]
        mass = float(e[ids].sum(dtype=np.float64))
    else:
        mass = float(e.sum(dtype=np.float64)) if floor <= 0 else float(e[e >= floor].sum(dtype=np.float64))
        ids = _head(e, floor, lambda c: float(e[c].sum(dtype=np.float64)) >= top_p * mass, sort=False)
        if len(ids) > _SORT_LIMIT:
            ids = _nucleus_by_histogram(e, ids, top_p * mass)
            return Dist(ids, e[ids].astype(np.float64))
        ids = ids[np.argsort(-e[ids], kind="stable")]
    w = e[ids].astype(np.float64)
    if top_p < 1.0:
        keep = min(len(w), int(np.searchsorted(np.cumsum(w), top_p * mass, side="left")) + 1)
        ids, w = ids[:keep], w[:keep]
    return Dist(ids, w)


def _nucleus_by_histogram(e: np.ndarray, idx: np.ndarray, target: float) -> np.ndarray:
    """The top-p nucleus of a broad distribution without sorting all its candidates.

    Weights are binned by log2 (8 bins per halving; heavier bins first); whole bins are
    taken until the one where the cumulative mass crosses ``target``, and only that bin is
    sorted. Same set as a full sort (ties by id), in a fraction of the time.
    """
    w = e[idx]
    bins = np.minimum((-np.log2(w) * 8).astype(np.int64), 4095)
    mass = np.cumsum(np.bincount(bins, weights=w.astype(np.float64)))
    b = min(int(np.searchsorted(mass, target, side="left")), len(mass) - 1)
    before = mass[b - 1] if b else 0.0
    edge = np.flatnonzero(bins == b)
    edge = edge[np.argsort(-w[edge], kind="stable")]
    need = min(len(edge), int(np.searchsorted(before + np.cumsum(w[edge], dtype=np.float64), target, side="left")) + 1)
    return np.concatenate([idx[bins < b], idx[edge[:need]]])


def distribution(z: np.ndarray, params: SamplingParams, allowed: np.ndarray | None = None) -> Dist:
    """The filtered next-token distribution of logits ``z``.

    Order: temperature, min-p (relative to the top token), top-k, top-p (each on the
    renormalized result of the previous one). Temperature 0 is greedy. ``allowed`` (ids)
    restricts the support first (the base-nucleus top-p mode; top-p is then not reapplied).
    """
    if allowed is not None:
        zz = z[allowed]
        if params.temperature == 0:
            return Dist(allowed[[int(np.argmax(zz))]], np.ones(1))
        d = _filter(zz, replace(params, top_p=1.0))
        return Dist(allowed if d.ids is None else allowed[d.ids], d.w, d.total)
    if params.temperature == 0:
        return Dist(np.array([int(np.argmax(z))]), np.ones(1))
    return _filter(z, params)


def base_nucleus(base: np.ndarray, n: int, params: SamplingParams) -> np.ndarray | None:
    """Sorted ids of the base model's top-p nucleus (DExperts mode), else None."""
    if params.top_p_mode != "base" or params.top_p >= 1.0 or params.temperature == 0:
        return None
    d = _filter(base[:n], SamplingParams(temperature=params.temperature, top_p=params.top_p))
    return np.sort(d.ids)


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

    Dense distributions are searched in two levels (block sums, then one block) so a
    152k-entry cumulative sum is never built.
    """
    w = dist.w
    if len(w) == 1:
        return int(dist.ids[0]) if dist.ids is not None else 0
    if dist.ids is not None or len(w) <= _BLOCK:
        c = np.cumsum(w, dtype=np.float64)
        i = min(int(np.searchsorted(c, u * c[-1], side="right")), len(c) - 1)
        return int(dist.ids[i]) if dist.ids is not None else i
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
    return b * _BLOCK + min(int(np.searchsorted(inner, rest, side="right")), len(inner) - 1)


def residual(p: Dist, q: Dist) -> Dist:
    """``norm(max(0, p − q))``: where to resample after the draft token was rejected."""
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
