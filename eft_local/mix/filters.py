"""Sampling filters as small functions over a candidate set.

``candidates`` turns a logit row into the ids still in the running and their tempered
weights ``exp((z − max) / T)`` (the top token weighs 1). With min-p or top-k it cuts in
*logit* space before exponentiating — to their upper set, and never keeping a token more
than ``T·(ln V + 20)`` below the top (it weighs under ``e^-20 / V``: all of them together
weigh less than float32 can represent next to 1) — so on a real model's row only a few
hundred candidates are exponentiated instead of 152k. Each filter then takes and returns
a ``Candidates``; a filter that is off returns its input. Adding one (typical-p is the
example) is one function and one line in ``FILTERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eft_local.mix.params import SamplingParams

TAIL = 20.0  # see the module docstring
_DENSE_FRACTION = 0.5  # keep a dense row when more than this share of ids survives the cut
_THRESHOLDS = (1e-2, 1e-4, 1e-6, 1e-9, 1e-13)  # weight floors tried to find a small nucleus head
_SORT_LIMIT = 4096  # above this many top-p candidates, find the nucleus by histogram
_TOP_K_STEPS = (2.0, 5.0, 10.0, 20.0)  # logit distances (× T) below the top tried for top-k
_TINY_T = 1.0 / float(np.finfo(np.float32).max)  # below this, 1/T is not a float32
_OVERFLOW_FREE_SCALE = 1e4  # logit gaps under FLT_MAX / 1e4 (every real model's) cannot overflow


@dataclass
class Candidates:
    """Ids (``None``: every id 0..len(w)-1) and float32 weights; ``by_weight``: sorted descending."""

    ids: np.ndarray | None
    w: np.ndarray
    by_weight: bool = False
    known_mass: float | None = None  # the float64 mass, when a filter already has it

    def __len__(self) -> int:
        return len(self.w)

    def take(self, idx: np.ndarray, by_weight: bool = False) -> Candidates:
        """The candidates at positions ``idx`` (of this set)."""
        return Candidates(idx if self.ids is None else self.ids[idx], self.w[idx], by_weight)

    def mass(self) -> float:
        return float(self.w.sum(dtype=np.float64)) if self.known_mass is None else self.known_mass

    def sorted(self) -> Candidates:
        if self.by_weight:
            return self
        return self.take(np.argsort(-self.w, kind="stable"), by_weight=True)


Filter = Callable[[Candidates, SamplingParams], Candidates]


def candidates(z: np.ndarray, temperature: float, params: SamplingParams | None = None) -> Candidates:
    """Tempered weights of the ids that can matter, cut in logit space before exponentiating.

    With min-p or top-k, only their upper set of the logits is exponentiated (with a small
    margin, so the weight-space filters below stay the authority on the boundary), never
    ids more than ``T·(ln V + 20)`` below the top (below float precision). Without them the
    whole row is exponentiated: top-p needs the exact total mass, and on real models' rows
    most ids lie within the precision cut anyway (56–99.9% of SmolLM2's at T = 0.7–1), so a
    cut would cost a pass and save little. A temperature so small that 1/T overflows
    float32 takes ``_tiny_temperature`` (the limit: the top logit's ties).
    """
    top = np.float32(z.max())
    if temperature < _TINY_T:
        return _tiny_temperature(z, float(top), temperature)
    scale = np.float32(1.0 / temperature)
    k = params.top_k if params is not None else 0
    min_p_value = params.min_p if params is not None else 0.0
    keep = None
    if (k and k < len(z)) or min_p_value > 0:
        floor = float(top) - temperature * (math.log(len(z)) + TAIL)
        if min_p_value > 0:
            floor = max(floor, float(top) + temperature * (math.log(min_p_value) - 1e-3))
        keep = _upper_set(z, float(top), floor, temperature, k)
    e = z - top if keep is None else z[keep] - top
    if scale < _OVERFLOW_FREE_SCALE:
        e *= scale
    else:  # a far token's (z − top)/T may pass −FLT_MAX: −inf, weight 0, which is exact
        with np.errstate(over="ignore"):
            e *= scale
    return Candidates(keep, np.exp(e, out=e))


def _tiny_temperature(z: np.ndarray, top: float, temperature: float) -> Candidates:
    """Weights for 0 < T < ``_TINY_T``, in float64 without overflow.

    Only ids within ``T·(ln V + 20)`` of the top can carry weight (in practice the top's
    ties: T → 0 is greedy, with ties sharing the mass); their gaps are clipped to that cut
    before dividing by T, so no quotient overflows even at T = 5e-324.
    """
    cut = temperature * (math.log(len(z)) + TAIL)
    keep = np.flatnonzero(z >= np.float32(top - cut))
    gaps = np.maximum(z[keep].astype(np.float64) - top, -cut)
    return Candidates(keep, np.exp(gaps / temperature).astype(np.float32))


def _upper_set(z: np.ndarray, top: float, floor: float, temperature: float, k: int) -> np.ndarray | None:
    """Ids with ``z >= floor`` — or, for top-k, with z above the highest step that still
    keeps ``k`` ids. ``None`` when most ids survive (then a dense row is cheaper)."""
    if k and k < len(z):
        for step in _TOP_K_STEPS:
            keep = np.flatnonzero(z >= np.float32(max(floor, top - temperature * step)))
            if len(keep) >= k:
                return keep
    above = z >= np.float32(floor)
    if np.count_nonzero(above) > _DENSE_FRACTION * len(z):
        return None
    return np.flatnonzero(above)


def min_p(c: Candidates, params: SamplingParams) -> Candidates:
    """Drop tokens below ``min_p`` × the top token's probability (the top weighs 1)."""
    if params.min_p <= 0:
        return c
    return c.take(np.flatnonzero(c.w >= np.float32(params.min_p)))


def top_k(c: Candidates, params: SamplingParams) -> Candidates:
    """The ``top_k`` heaviest tokens; ties at the boundary go to the lower ids."""
    k = params.top_k
    if not k or k >= len(c):
        return c
    kth = np.partition(c.w, len(c) - k)[len(c) - k]
    above = np.flatnonzero(c.w > kth)
    ties = np.flatnonzero(c.w == kth)[: k - len(above)]
    idx = np.concatenate([above, ties])
    return c.take(idx[np.argsort(-c.w[idx], kind="stable")], by_weight=True)


def typical_p(c: Candidates, params: SamplingParams) -> Candidates:
    """Locally typical sampling: tokens whose surprisal is closest to the entropy, up to mass ``typical_p``."""
    if params.typical_p >= 1.0:
        return c
    p = c.w.astype(np.float64) / c.mass()
    logp = np.log(np.maximum(p, 1e-300))
    entropy = -float((p * logp).sum())
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    keep = min(len(order), int(np.searchsorted(np.cumsum(p[order]), params.typical_p, side="left")) + 1)
    return c.take(order[:keep])


def top_p(c: Candidates, params: SamplingParams) -> Candidates:
    """The smallest heaviest set holding ``top_p`` of the mass (EFT mode; see ``base_nucleus``)."""
    if params.top_p >= 1.0 or params.top_p_mode != "eft":
        return c
    return nucleus(c, params.top_p)


def nucleus(c: Candidates, top_p_value: float) -> Candidates:
    """The smallest heaviest set holding ``top_p_value`` of ``c``'s mass (ties: lower position first).

    A broad row's exact float64 mass costs a pass of its own; ``_nucleus_from_bounds`` first
    tries a float32 sum with a rigorous error margin, which fixes the same set whenever the
    set is the same for every mass inside that margin (nearly always), and only otherwise
    is the exact mass computed. Either way the result is the one the exact mass gives.
    """
    if c.by_weight or len(c) <= _SORT_LIMIT:
        return _nucleus_sorted(c, top_p_value * c.mass())
    heads = _Heads(c)
    found = _nucleus_from_bounds(c, heads, top_p_value)
    if found is not None:
        return found
    total = c.mass()
    target = top_p_value * total
    c = heads.first_holding(target)
    if len(c) > _SORT_LIMIT:
        if c.ids is None:
            found = _nucleus_by_bracket(c.w, target, total)
            if found is not None:
                return found
        return c.take(_nucleus_by_histogram(c.w, target))
    return _nucleus_sorted(c, target)


def _nucleus_sorted(c: Candidates, target: float) -> Candidates:
    c = c.sorted()
    keep, _ = _prefix_holding(c.w, target)
    return c.take(np.arange(keep), by_weight=True)


def _prefix_holding(w: np.ndarray, need: float) -> tuple[int, float]:
    """How many of the (descending) weights ``w`` it takes for their float64 sum to reach
    ``need`` (all of them if it never does), and that sum."""
    cum = np.cumsum(w, dtype=np.float64)
    keep = min(len(w), int(np.searchsorted(cum, need, side="left")) + 1)
    return keep, float(cum[keep - 1])


# NumPy sums a contiguous float32 row pairwise: its rounding error is below depth · 2⁻²⁴ of
# the (non-negative) total, depth ≈ 16 + 3 + log2(n / 128) ≈ 30 at 152k ids (≈ 2e-6). The
# margin, 1e-5 ≈ 168 · 2⁻²⁴, allows five times that (tests check the sum is pairwise).
_F32_SUM_SLACK = 1e-5


def _nucleus_from_bounds(c: Candidates, heads: _Heads, top_p_value: float) -> Candidates | None:
    """The nucleus from a float32 mass, or None when the exact float64 mass is needed.

    Both decisions that the target mass makes (which weight floor's head holds it, and the
    cut in that head's cumulative sum) are monotone in the target, so when they come out
    the same at both ends of the float32 sum's error interval they are the exact ones.
    """
    approx = float(c.w.sum())
    lo = top_p_value * approx * (1.0 - _F32_SUM_SLACK)
    hi = top_p_value * approx * (1.0 + _F32_SUM_SLACK)
    head = heads.first_holding(lo)
    if head is c or heads.first_holding(hi) is not head or len(head) > _SORT_LIMIT:
        return None
    head = head.sorted()
    cum = np.cumsum(head.w, dtype=np.float64)
    keep = int(np.searchsorted(cum, lo, side="left"))
    if keep != int(np.searchsorted(cum, hi, side="left")):
        return None
    return head.take(np.arange(min(len(head), keep + 1)), by_weight=True)


class _Heads:
    """The candidates above each weight floor of ``_THRESHOLDS`` with their float64 masses,
    computed once per floor and only as far as asked. The two highest floors come from one
    comparison pass (the highest is a subset of the second). A floor with more than
    ``_SORT_LIMIT`` ids above it is only counted (listing 100k ids costs 0.2 ms): it and
    every lower floor stand for all candidates."""

    def __init__(self, c: Candidates) -> None:
        self.c = c
        self.heads: list[tuple[Candidates, float] | None] = []  # None: too broad to list
        self._second: np.ndarray | None = None  # positions above the second floor

    def _head(self, j: int) -> tuple[Candidates, float] | None:
        while len(self.heads) <= j:
            i = len(self.heads)
            w = self.c.w
            if self.heads and self.heads[-1] is None:
                idx = None
            elif i == 0:
                above = w >= np.float32(_THRESHOLDS[1])
                if np.count_nonzero(above) <= _SORT_LIMIT:
                    self._second = np.flatnonzero(above)
                    idx = self._second[w[self._second] >= np.float32(_THRESHOLDS[0])]
                else:
                    idx = np.flatnonzero(w >= np.float32(_THRESHOLDS[0]))
            elif i == 1:
                idx = self._second
            else:
                above = w >= np.float32(_THRESHOLDS[i])
                idx = np.flatnonzero(above) if np.count_nonzero(above) <= _SORT_LIMIT else None
            if idx is None:
                self.heads.append(None)
                continue
            head = self.c.take(idx)
            self.heads.append((head, float(head.w.sum(dtype=np.float64))))  # = w[idx]: no second gather
        return self.heads[j]

    def first_holding(self, target: float) -> Candidates:
        """The head above the highest floor whose mass reaches ``target`` (else all candidates)."""
        for j in range(len(_THRESHOLDS)):
            found = self._head(j)
            if found is None:
                break
            if found[1] >= target:
                return found[0]
        return self.c


_STRIDE = 16  # a broad nucleus's cut is first read off every 16th weight
_BRACKET = 0.1  # the band: ± this share of the tail's mass around the cut (≈ 5σ of the sample's error on flat rows)
_KEY_SHIFT = 16  # float32 bits >> 16: sign, exponent and 7 mantissa bits, a bin per 1/128 octave


def _nucleus_by_bracket(w: np.ndarray, target: float, total: float) -> Candidates | None:
    """The top-p nucleus of a broad dense row as a dense row (zero outside it), or None when
    the sample misled.

    A strided sample of the weights, binned by their float32 bits (monotone for positive
    floats: no log, no sort), estimates the mass of the tail (the lightest ids) below each
    bin edge — many small weights, so the estimate is good to ~2 % of the tail — and so two
    weights around the cut, ``_BRACKET`` of the tail's mass either side. They split the row
    into a sure part (heavier than both), the tail, and a thin band between; the exact
    masses confirm that the cut lies inside the band, and only the band is ordered. Same set
    as a full sort (ties by position) whenever it answers; kept dense because listing a
    30k-id nucleus costs more than the rest of the cut.
    """
    sample = w[::_STRIDE]
    keys = (sample.view(np.int32) >> _KEY_SHIFT).astype(np.intp)
    k0 = int(keys.min())
    below = np.cumsum(np.bincount(keys - k0, weights=sample)) * _STRIDE  # tail mass up to each bin's top
    tail = total - target
    lo, hi = (_bin_floor(k0 + int(np.searchsorted(below, tail * f)), _KEY_SHIFT) for f in (1.0 - _BRACKET, 1.0 + _BRACKET))
    sure = w >= hi
    kept = np.multiply(w, sure)
    mass_sure = float(kept.sum(dtype=np.float64))
    band = np.flatnonzero((w >= lo) & ~sure)
    band_w = w[band]
    if mass_sure >= target or mass_sure + float(band_w.sum(dtype=np.float64)) < target:
        return None
    take, mass_taken = _heaviest_holding(band_w, target - mass_sure)
    kept[band[take]] = band_w[take]
    return Candidates(None, kept, known_mass=mass_sure + mass_taken)


def _bin_floor(key: int, shift: int) -> np.float32:
    """The smallest float32 whose bits >> ``shift`` are ``key``."""
    return np.array(key << shift, np.int32).view(np.float32)[()]


def _heaviest_holding(w: np.ndarray, need: float) -> tuple[np.ndarray, float]:
    """Positions of the heaviest weights (ties: lower position first) whose float64 sum first
    reaches ``need``, and that sum: whole float32-bit bins first, then one bin sorted."""
    if len(w) <= 64:
        return _sorted_prefix(w, need)
    bits = w.view(np.int32)
    shift = max(0, int(bits.max() - bits.min()).bit_length() - 8)  # ~256 bins across the band
    keys = (bits >> shift).astype(np.intp)
    k_top = int(keys.max())
    rev = k_top - keys  # heaviest bin first
    mass = np.cumsum(np.bincount(rev, weights=w))
    b = min(int(np.searchsorted(mass, need, side="left")), len(mass) - 1)
    before = float(mass[b - 1]) if b else 0.0
    edge = np.flatnonzero(rev == b)
    inner, inner_mass = _heaviest_holding(w[edge], need - before) if len(edge) < len(w) else _sorted_prefix(w, need)
    return np.concatenate([np.flatnonzero(rev < b), edge[inner]]), before + inner_mass


def _sorted_prefix(w: np.ndarray, need: float) -> tuple[np.ndarray, float]:
    """``_heaviest_holding`` by a full sort."""
    order = np.argsort(-w, kind="stable")
    keep, mass = _prefix_holding(w[order], need)
    return order[:keep], mass


def _nucleus_by_histogram(w: np.ndarray, target: float) -> np.ndarray:
    """Positions of the top-p nucleus of a broad distribution without sorting it all.

    Weights are binned by log2 (8 bins per halving; heavier bins first); whole bins are
    taken until the one where the cumulative mass crosses ``target``, and only that bin is
    sorted. Same set as a full sort (ties by position), in a fraction of the time.
    """
    bins = np.minimum((-np.log2(np.maximum(w, np.float32(1e-38))) * 8).astype(np.int64), 4095)
    mass = np.cumsum(np.bincount(bins, weights=w.astype(np.float64)))
    b = min(int(np.searchsorted(mass, target, side="left")), len(mass) - 1)
    before = mass[b - 1] if b else 0.0
    edge = np.flatnonzero(bins == b)
    edge = edge[np.argsort(-w[edge], kind="stable")]
    need = min(len(edge), int(np.searchsorted(before + np.cumsum(w[edge], dtype=np.float64), target, side="left")) + 1)
    return np.concatenate([np.flatnonzero(bins < b), edge[:need]])


# Applied in this order, each to the renormalized result of the previous one.
FILTERS: tuple[Filter, ...] = (min_p, top_k, typical_p, top_p)
