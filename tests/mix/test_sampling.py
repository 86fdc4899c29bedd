"""EFT math and samplers, checked against plain dense reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from eft_local.errors import UserError
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import (
    Dist,
    accept,
    base_nucleus,
    combine,
    distribution,
    eft_distribution,
    residual,
    sample,
    three_roles,
    token_logprob,
)


def rows(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 3).astype(np.float32) for _ in range(3)]


def dense_probs(z, T, top_k=0, top_p=1.0, min_p=0.0):
    """Reference: full softmax then filters in the documented order (min-p, top-k, top-p)."""
    z = z.astype(np.float64)
    p = np.exp((z - z.max()) / T)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = p[order] >= min_p * p[order[0]]
    if top_k:
        keep[top_k:] = False
    ps = np.where(keep, p[order], 0)
    ps /= ps.sum()
    if top_p < 1:
        c = np.cumsum(ps)
        cut = np.searchsorted(c, top_p * c[-1], side="left") + 1
        ps[cut:] = 0
        ps /= ps.sum()
    out = np.zeros_like(p)
    out[order] = ps
    return out


def as_dense(d: Dist, n):
    out = np.zeros(n)
    out[d.ids] = d.probs
    return out


@pytest.mark.parametrize("alpha,beta", [(1, 1), (0, 1), (1, 0), (0, 0), (0.5, 1.5), (2.0, -0.3)])
def test_combine_matches_formula(alpha, beta):
    b, c, r = rows()
    z = combine(*three_roles(b, c, r, alpha, beta))
    expect = r.astype(np.float64) + alpha * (c - r.astype(np.float64)) + beta * (b - r.astype(np.float64))
    np.testing.assert_allclose(z, expect, rtol=1e-5, atol=1e-4)


def test_combine_corners_are_exact():
    b, c, r = rows()
    np.testing.assert_array_equal(combine(*three_roles(b, c, r, 0, 1)), b)
    np.testing.assert_array_equal(combine(*three_roles(b, c, r, 1, 0)), c)
    np.testing.assert_array_equal(combine(*three_roles(b, c, r, 0, 0)), r)


def _combine_term_by_term(rows_, weights, n):
    """The float32 operations combine is defined by: first term, then each term in order."""
    terms = [(np.float32(w), x[:n]) for w, x in zip(weights, rows_) if w != 0.0]
    out = terms[0][1].copy() if terms[0][0] == 1 else terms[0][1] * terms[0][0]
    for w, x in terms[1:]:
        out = out + x if w == 1 else out - x if w == -1 else out + w * x
    return out


@pytest.mark.parametrize(
    "weights",
    [(1, -1, 1), (1, 1, -1), (1, -1), (1, 0, -1, 1), (1, 0.3, -1), (0.7, -1, 1), (-1, 1, 1), (1.5, -2.5, 1)],
)
def test_combine_is_bit_identical_to_term_by_term(weights):
    """The fused first pair (x0 ± x1 in one ufunc) rounds exactly as copy-then-in-place did:
    seeded outputs depend on it."""
    rng = np.random.default_rng(3)
    rows_ = [rng.standard_normal(5000).astype(np.float32) * s for s in (30, 0.1, 7, 1)][: len(weights)]
    expect = _combine_term_by_term(rows_, weights, 4999)
    np.testing.assert_array_equal(combine(rows_, weights, np.empty(4999, np.float32)), expect)
    np.testing.assert_array_equal(combine(rows_, weights, np.empty(4999, np.float32), np.empty(4999, np.float32)), expect)


def test_combine_uses_shared_prefix_of_padded_rows():
    b, c, r = rows()
    b_padded = np.concatenate([b, np.full(128, 100.0, np.float32)])
    z = combine(*three_roles(b_padded, c, r, 1, 1))
    assert len(z) == len(c)
    np.testing.assert_allclose(z, c + b - r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "T,top_k,top_p,min_p",
    [(1.0, 0, 1.0, 0.0), (0.7, 0, 0.9, 0.0), (1.3, 20, 1.0, 0.0), (1.0, 0, 1.0, 0.05), (0.8, 50, 0.8, 0.01)],
)
def test_filtered_distribution_matches_dense(T, top_k, top_p, min_p):
    z = rows(5000, seed=3)[0]
    d = distribution(z, SamplingParams(temperature=T, top_k=top_k, top_p=top_p, min_p=min_p))
    np.testing.assert_allclose(as_dense(d, len(z)), dense_probs(z, T, top_k, top_p, min_p), atol=1e-7)


def test_greedy_is_argmax():
    z = rows()[1]
    d = distribution(z, SamplingParams(temperature=0))
    assert d.ids.tolist() == [int(np.argmax(z))] and d.probs.tolist() == [1.0]


@pytest.mark.parametrize("spread", [4, 0.5])
def test_unfiltered_distribution_is_dense_softmax_at_large_vocab(spread):
    z = rows(152_064, seed=4)[0] * spread
    d = distribution(z, SamplingParams(temperature=1.3, top_p=1.0))
    assert d.ids is None
    np.testing.assert_allclose(d.dense(len(z)), dense_probs(z, 1.3), rtol=2e-5, atol=1e-12)


def test_typical_p_keeps_the_tokens_nearest_the_entropy():
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    d = distribution(z, SamplingParams(temperature=1.0, typical_p=0.5, top_p=1.0))
    p = np.array([0.5, 0.3, 0.15, 0.05])
    h = -(p * np.log(p)).sum()
    order = np.argsort(np.abs(-np.log(p) - h))
    assert d.ids.tolist() == order[: int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1].tolist()


@pytest.mark.parametrize("top_p,top_k,min_p", [(0.95, 0, 0.0), (0.5, 0, 0.0), (1.0, 40, 0.0), (0.9, 100, 1e-3)])
def test_filters_on_peaked_logits_at_large_vocab(top_p, top_k, min_p):
    """Real-model-like rows (a few strong candidates over a long tail) at 152k ids."""
    rng = np.random.default_rng(8)
    z = (rng.standard_normal(152_064) * 2.0).astype(np.float32)
    z[rng.choice(152_064, 30, replace=False)] += rng.uniform(6, 14, 30).astype(np.float32)
    d = distribution(z, SamplingParams(temperature=0.7, top_p=top_p, top_k=top_k, min_p=min_p))
    np.testing.assert_allclose(d.dense(len(z)), dense_probs(z, 0.7, top_k, top_p, min_p), atol=1e-6)


def test_dense_sampling_follows_distribution():
    rng = np.random.default_rng(3)
    w = rng.random(5000).astype(np.float32) ** 8  # uneven, spans several sampling blocks
    d = Dist(None, w)
    draws = np.array([sample(d, rng.random()) for _ in range(20000)])
    assert draws.min() >= 0 and draws.max() < 5000
    block = draws // 500  # compare mass per 500-id block
    expect = np.add.reduceat(w.astype(np.float64), np.arange(0, 5000, 500)) / w.sum(dtype=np.float64)
    assert stats.chisquare(np.bincount(block, minlength=10), expect * 20000).pvalue > 1e-3


def test_dense_and_sparse_residual_agree():
    rng = np.random.default_rng(4)
    p_dense = rng.dirichlet(np.ones(50))
    q_ids = np.array([3, 9, 17])
    q = Dist(q_ids, np.array([0.5, 0.3, 0.2]))
    r = residual(Dist(None, p_dense.astype(np.float32)), q).dense(50)
    expect = np.maximum(p_dense - Dist(q_ids, np.array([0.5, 0.3, 0.2])).dense(50), 0)
    np.testing.assert_allclose(r, expect / expect.sum(), atol=1e-6)


def test_mask_never_emitted():
    b, c, r = rows(200)
    top = int(np.argmax(c + b - r))
    d = eft_distribution(*three_roles(b, c, r, 1.0, 1.0), SamplingParams(temperature=0), 200, mask=np.array([top]))
    assert d.ids[0] != top
    d = eft_distribution(*three_roles(b, c, r, 1.0, 1.0), SamplingParams(temperature=5.0, top_p=1.0), 200, mask=np.array([top]))
    assert d.prob(top) == 0.0 and d.prob(int(np.argmin(np.abs(c)))) > 0


def test_base_nucleus_mode_restricts_support_to_base_top_p():
    b, c, r = rows(300, seed=9)
    params = SamplingParams(temperature=1.0, top_p=0.5, top_p_mode="base")
    allowed = base_nucleus(b, 300, params)
    base_p = dense_probs(b, 1.0, top_p=0.5)
    assert sorted(allowed.tolist()) == sorted(np.flatnonzero(base_p).tolist())
    d = eft_distribution(*three_roles(b, c, r, params.alpha, params.beta), params, 300, base=b)
    assert set(d.ids.tolist()) <= set(allowed.tolist())
    z = (c + b - r).astype(np.float64)
    sub = np.exp(z[allowed] - z[allowed].max())
    np.testing.assert_allclose(as_dense(d, 300)[allowed], sub / sub.sum(), atol=1e-6)


def test_sample_follows_distribution():
    d = Dist(np.array([3, 7, 11]), np.array([0.2, 0.5, 0.3]))
    rng = np.random.default_rng(0)
    draws = [sample(d, rng.random()) for _ in range(6000)]
    counts = [draws.count(i) for i in (3, 7, 11)]
    assert stats.chisquare(counts, np.array([0.2, 0.5, 0.3]) * 6000).pvalue > 1e-3


def test_residual_is_normalized_positive_part():
    p = Dist(np.array([1, 2, 3]), np.array([0.5, 0.3, 0.2]))
    q = Dist(np.array([2, 3, 4]), np.array([0.6, 0.1, 0.3]))
    r = residual(p, q)
    dense = as_dense(r, 5)
    np.testing.assert_allclose(dense, np.array([0, 0.5, 0, 0.1, 0]) / 0.6)


def test_speculative_step_is_exactly_p():
    """Drafting from q then accept/resample yields p: computed exactly, not sampled."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 8
        p_dense = rng.dirichlet(np.ones(n) * 0.5)
        q_dense = rng.dirichlet(np.ones(n) * 0.5)
        p = Dist(np.arange(n), p_dense)
        q = Dist(np.arange(n), q_dense)
        accept_prob = np.minimum(1, p_dense / q_dense)
        reject_mass = float((q_dense * (1 - accept_prob)).sum())
        out = q_dense * accept_prob + reject_mass * as_dense(residual(p, q), n)
        np.testing.assert_allclose(out, p_dense, atol=1e-12)


def test_accept_rate_is_min_one_ratio():
    p = Dist(np.array([0, 1]), np.array([0.2, 0.8]))
    q = Dist(np.array([0, 1]), np.array([0.8, 0.2]))
    rng = np.random.default_rng(2)
    rate = np.mean([accept(p, q, 0, rng.random()) for _ in range(4000)])
    assert abs(rate - 0.25) < 0.03
    assert all(accept(p, q, 1, rng.random()) for _ in range(100))


def test_token_logprob_matches_dense_log_softmax():
    z = rows(50_000, seed=5)[2] * 2
    dense = z.astype(np.float64) - z.max()
    dense -= np.log(np.exp(dense).sum())
    for t in (0, 17, int(np.argmax(z)), int(np.argmin(z))):
        assert token_logprob(z, t, len(z)) == pytest.approx(dense[t], abs=1e-4)


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1), dict(top_k=-2), dict(top_p_mode="x")]
)
def test_invalid_params_are_user_errors(kwargs):
    with pytest.raises(UserError):
        SamplingParams(**kwargs).validate()


@pytest.mark.parametrize("top_p", [0.95, 0.5])
def test_broad_nucleus_is_the_sorted_nucleus(top_p):
    """Flat logits: a nucleus of tens of thousands of ids (the bracket path, dense)."""
    z = rows(152_064, seed=12)[0] / 3
    d = distribution(z, SamplingParams(temperature=1.0, top_p=top_p))
    assert np.count_nonzero(d.dense(len(z))) > 4096
    np.testing.assert_allclose(d.dense(len(z)), dense_probs(z, 1.0, top_p=top_p), atol=1e-9)
