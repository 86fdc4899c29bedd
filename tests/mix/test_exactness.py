"""The 0.2.0 sampling paths keep the EFT distribution exact.

- naive rounds draw from p directly (``sample``), speculative rounds propose from any q
  (``proposal``: the drafter's head; a point mass) and accept/resample (``accept``,
  ``residual``): chi-square tests of many draws against the float64 reference distribution
  at 152k ids, for every filter in use (plain, top-p, top-k, min-p, DExperts), plus the
  exact identity "q·min(1, p/q) + rejected mass·residual = p" for each kind of q;
- a broad nucleus (the strided-sample bracket, returned dense) is the full sort's set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from eft_local.mix import filters
from eft_local.mix.filters import candidates, nucleus
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import (
    Dist,
    accept,
    base_nucleus,
    distribution,
    eft_distribution,
    proposal,
    residual,
    sample,
)
from tests.mix.test_distribution import chi2_pvalue
from tests.mix.test_filters_nucleus import full_sort_nucleus, members
from tests.mix.test_sampling import dense_probs

N = 151_936
DRAWS = 20_000
FILTERS = {
    "plain": SamplingParams(temperature=1.0, top_p=1.0),
    "top-p": SamplingParams(temperature=0.7, top_p=0.95),
    "top-k": SamplingParams(temperature=0.8, top_p=1.0, top_k=20),
    "min-p": SamplingParams(temperature=1.0, top_p=1.0, min_p=0.05),
    "dexperts": SamplingParams(temperature=0.7, top_p=0.9, top_p_mode="base"),
}


def family_rows(seed: int, flat: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, chat, reference) rows at 152k ids: a real model's shape (a few strong
    candidates over a long tail), or flat i.i.d. rows (a nucleus of tens of thousands).
    Base and chat are the reference plus small changes, so the drafter mostly agrees with
    EFT (as the models of a family do) and both branches of a speculative step run."""
    rng = np.random.default_rng(seed)
    if flat:
        return tuple(rng.standard_normal(N, dtype=np.float32) for _ in range(3))
    ref = rng.standard_normal(N, dtype=np.float32) * np.float32(2.0)
    head = rng.choice(N, 12, replace=False)
    ref[head] += rng.uniform(3.0, 5.0, len(head)).astype(np.float32)
    base, chat = (ref + rng.standard_normal(N, dtype=np.float32) * np.float32(0.5) for _ in range(2))
    return base, chat, ref


def reference_probs(rows, params: SamplingParams) -> np.ndarray:
    """The EFT distribution in float64 from the definition (α = β = 1: chat + base − reference)."""
    base, chat, ref = (r.astype(np.float64) for r in rows)
    z = chat + base - ref
    if params.top_p_mode == "base" and params.top_p < 1.0:
        allowed = np.flatnonzero(dense_probs(base, params.temperature, top_p=params.top_p))
        sub = np.exp((z[allowed] - z[allowed].max()) / params.temperature)
        out = np.zeros(N)
        out[allowed] = sub / sub.sum()
        return out
    return dense_probs(z, params.temperature, params.top_k, params.top_p, params.min_p)


def target(rows, params: SamplingParams) -> Dist:
    base, chat, ref = rows
    return eft_distribution([chat, base, ref], [1.0, 1.0, -1.0], params, N, base=base)


def as_probs(counts: Counter, probs: np.ndarray) -> dict[int, float]:
    support = set(np.flatnonzero(probs).tolist()) | set(counts)
    return {i: float(probs[i]) for i in support}


@pytest.mark.parametrize("name", list(FILTERS))
def test_naive_draws_from_p_follow_the_reference(name):
    params = FILTERS[name]
    rows = family_rows(1)
    p = target(rows, params)
    rng = np.random.default_rng(5)
    counts = Counter(sample(p, u) for u in rng.random(DRAWS))
    assert chi2_pvalue(counts, as_probs(counts, reference_probs(rows, params)), DRAWS) > 1e-3


@pytest.mark.parametrize("kind", ["head", "point", "full"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_speculative_step_with_any_proposal_follows_the_reference(name, kind):
    """Draft x ~ q, keep it w.p. min(1, p/q), else resample from the residual: p's law
    for the drafter's head proposal, a point mass (greedy draft) and the full q alike."""
    params = FILTERS[name]
    rows = family_rows(2)
    p = target(rows, params)
    chat = rows[1]
    draft = replace(params, top_p_mode="eft")
    q = {
        "head": proposal(chat, draft),
        "point": proposal(chat, replace(draft, temperature=0.0)),
        "full": distribution(chat, draft),
    }[kind]
    rng = np.random.default_rng(6)
    counts: Counter = Counter()
    rejected = 0
    res = residual(p, q)
    for u in rng.random((DRAWS, 3)):
        x = sample(q, u[0])
        if accept(p, q, x, u[1]):
            counts[x] += 1
        else:
            counts[sample(res, u[2])] += 1
            rejected += 1
    assert 0 < rejected < DRAWS  # both branches ran
    assert chi2_pvalue(counts, as_probs(counts, reference_probs(rows, params)), DRAWS) > 1e-3


def _spec_law(p: Dist, q: Dist) -> np.ndarray:
    """The output law of one speculative step, computed exactly (no sampling)."""
    pd, qd = p.dense(N), q.dense(N)
    keep = np.where(qd > 0, np.minimum(1.0, pd / np.where(qd > 0, qd, 1.0)), 0.0)
    return qd * keep + float((qd * (1 - keep)).sum()) * residual(p, q).dense(N)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_speculative_law_is_p_for_every_kind_of_proposal(flat, top_p):
    rows = family_rows(3, flat)
    params = SamplingParams(temperature=0.9, top_p=top_p)
    p = target(rows, params)
    chat = rows[1]
    x = int(np.argmax(p.dense(N)))
    for q in (
        proposal(chat, params),
        proposal(chat, replace(params, temperature=0.0)),
        Dist(np.array([x]), np.ones(1)),  # the point mass on p's own top
        distribution(chat, params),
        Dist(None, np.exp(chat - chat.max()).astype(np.float32)),  # dense, unfiltered
    ):
        np.testing.assert_allclose(_spec_law(p, q), p.dense(N), atol=2e-7)


def test_point_mass_residual_is_p_without_the_draft():
    for p in (Dist(None, np.array([0.5, 0.0, 0.3, 0.2], np.float32)), Dist(np.array([7, 2, 9]), np.array([0.5, 0.3, 0.2]))):
        r = residual(p, Dist(np.array([7 if p.ids is not None else 0]), np.ones(1)))
        expect = p.dense(10)
        expect[7 if p.ids is not None else 0] = 0
        np.testing.assert_allclose(r.dense(10), expect / expect.sum())
    sure = Dist(np.array([4]), np.ones(1))  # p(x) = 1: never rejected; the residual is p itself
    assert residual(sure, sure) is sure


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7, top_p=0.95), SamplingParams(temperature=1.0, top_k=5)])
def test_proposal_never_proposes_a_masked_id(params):
    z = family_rows(4)[1]
    mask = np.argsort(-z)[:3]  # the drafter's three favourites are padding ids
    for p in (params, replace(params, temperature=0.0)):
        q = proposal(z, p, mask)
        assert q.dense(N)[mask].tolist() == [0.0, 0.0, 0.0] and q.dense(N).sum() == pytest.approx(1.0)
    assert proposal(z, replace(params, temperature=0.0), mask).ids.tolist() == [int(np.argsort(-z)[3])]


def test_proposal_is_the_drafters_distribution_when_its_head_holds_it():
    z = family_rows(5)[1]
    params = SamplingParams(temperature=0.7, top_k=8, top_p=1.0)
    q, full = proposal(z, params), distribution(z, params)
    assert sorted(q.ids.tolist()) == sorted(full.ids.tolist())
    np.testing.assert_allclose(q.dense(N), full.dense(N), rtol=1e-6)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.95), (1.0, 0.9), (1.5, 0.99), (0.7, 0.5)])
def test_broad_nucleus_by_bracket_is_the_full_sort_set(temperature, top_p):
    rng = np.random.default_rng(int(temperature * 10 + top_p * 100))
    for _ in range(4):
        c = candidates(sum(family_rows(int(rng.integers(1 << 30)), flat=True)), temperature)
        got = nucleus(c, top_p)
        want = full_sort_nucleus(c.w, top_p)
        np.testing.assert_array_equal(members(got), np.sort(want))
        assert got.mass() == pytest.approx(float(c.w[want].sum(dtype=np.float64)), rel=1e-12)


def test_a_bracket_that_misses_falls_back_to_the_exact_set(monkeypatch):
    monkeypatch.setattr(filters, "_BRACKET", -0.5)  # a band that cannot hold the cut
    c = candidates(sum(family_rows(7, flat=True)), 0.8)
    assert filters._nucleus_by_bracket(c.w, 0.9 * c.mass(), c.mass()) is None
    np.testing.assert_array_equal(members(nucleus(c, 0.9)), np.sort(full_sort_nucleus(c.w, 0.9)))


def test_dexperts_allowed_ids_from_a_broad_base_nucleus():
    base = sum(family_rows(8, flat=True))
    params = SamplingParams(temperature=1.0, top_p=0.9, top_p_mode="base")
    np.testing.assert_array_equal(base_nucleus(base, N, params), np.sort(full_sort_nucleus(candidates(base, 1.0).w, 0.9)))


def test_broad_nucleus_with_weightless_ids_and_exact_ties():
    """Masked ids (weight 0) and weights that tie exactly (coarse logits) across the cut: the
    same set as the full sort, ties taken by position."""
    rng = np.random.default_rng(11)
    z = np.round(rng.standard_normal(N) * 8).astype(np.float32) / 8  # 1/8 steps: thousands of ties per value
    z[rng.choice(N, N // 5, replace=False)] = -np.inf
    c = candidates(z, 1.0)
    for top_p in (0.95, 0.9, 0.6):
        got = nucleus(c, top_p)
        np.testing.assert_array_equal(members(got), np.sort(full_sort_nucleus(c.w, top_p)))
