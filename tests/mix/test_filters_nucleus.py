"""The top-p nucleus of a broad row (float32 mass with an error margin, heads from one
comparison pass) is exactly the nucleus a full sort and the exact float64 mass give."""

from __future__ import annotations

import numpy as np
import pytest

from eft_local.mix import filters
from eft_local.mix.filters import candidates, nucleus

N_VOCAB = 151_936


def full_sort_nucleus(w: np.ndarray, top_p: float) -> np.ndarray:
    """Positions of the nucleus by definition: heaviest first (ties: lower position), exact mass."""
    order = np.argsort(-w, kind="stable")
    target = top_p * float(w.sum(dtype=np.float64))
    keep = int(np.searchsorted(np.cumsum(w[order], dtype=np.float64), target, side="left")) + 1
    return order[:keep]


def members(c: filters.Candidates) -> np.ndarray:
    """Sorted ids a filter kept (a broad nucleus comes back dense: zero outside it)."""
    return np.flatnonzero(c.w) if c.ids is None else np.sort(c.ids)


def peaked_row(rng: np.random.Generator, n_head: int, lift: float) -> np.ndarray:
    z = rng.standard_normal(N_VOCAB, dtype=np.float32) * np.float32(2.5)
    z[rng.choice(N_VOCAB, n_head, replace=False)] += np.float32(lift)
    return z


@pytest.mark.parametrize("slack", [filters._F32_SUM_SLACK, 1.0])  # 1.0: the bounds never decide
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.99])
def test_broad_row_nucleus_is_the_exact_sorted_nucleus(monkeypatch, slack, top_p):
    monkeypatch.setattr(filters, "_F32_SUM_SLACK", slack)
    rng = np.random.default_rng(int(top_p * 100))
    for n_head, lift, temperature in [(1, 20.0, 0.7), (8, 15.0, 0.7), (40, 10.0, 1.0), (300, 8.0, 0.7), (3, 12.0, 1.3)]:
        c = candidates(peaked_row(rng, n_head, lift), temperature)
        got = nucleus(c, top_p)
        want = full_sort_nucleus(c.w, top_p)
        # the same set (a broad nucleus comes back dense, zero outside it)
        np.testing.assert_array_equal(members(got), np.sort(want))
        if got.ids is None:
            np.testing.assert_array_equal(got.w[want], c.w[want])
        else:
            np.testing.assert_array_equal(got.w, c.w[got.ids])
        assert got.mass() == pytest.approx(float(c.w[want].sum(dtype=np.float64)), rel=1e-12)


def test_knife_edge_target_falls_back_to_the_exact_mass():
    """Weights whose cumulative sum crosses the target inside the float32 margin: the bounds
    cannot decide, and the exact mass does (the boundary token is in or out as it says)."""
    w = np.full(N_VOCAB, np.float32(1e-9), dtype=np.float32)
    w[:4] = np.float32([1.0, 0.5, 0.25, 0.125])
    head = float(w[:3].sum(dtype=np.float64))
    top_p = head / float(w.sum(dtype=np.float64))  # the target is the cumulative mass at the 3rd token, exactly
    for p in (np.nextafter(top_p, 0.0), top_p, np.nextafter(top_p, 1.0)):
        c = filters.Candidates(None, w)
        np.testing.assert_array_equal(members(nucleus(c, float(p))), np.sort(full_sort_nucleus(w, float(p))))


def test_numpy_sums_float32_pairwise_as_the_margin_assumes():
    """``filters._F32_SUM_SLACK`` relies on NumPy's pairwise float32 sum (error ~log2(n)·2⁻²⁴);
    a sequential sum would stall at 2^24 here (and could misplace a nucleus boundary)."""
    n = 2**24 + 4096
    assert float(np.ones(n, np.float32).sum()) == n
