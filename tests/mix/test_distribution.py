"""Sampled output follows the exact EFT distribution, speculative decoding on and off.

The expected first-token distribution and the second-token marginal are computed from
independently evaluated logits of the three models; thousands of seeded generations are
compared against them with a chi-square test.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from eft_local.engine.config import GenerationConfig
from eft_local.llama.adapter import LlamaModel
from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import eft_distribution, three_roles

N_SAMPLES = 2500
CONFIGS = {
    "T1-topk6": SamplingParams(alpha=1.0, beta=1.0, temperature=1.0, top_k=6, top_p=1.0),
    "T0.8-topp0.9": SamplingParams(alpha=1.0, beta=1.0, temperature=0.8, top_p=0.9, top_k=10),
}


@pytest.fixture(scope="module")
def reference_models(family):
    models = {r: LlamaModel(p, n_ctx=128) for r, p in family.paths().items()}
    yield models
    for m in models.values():
        m.close()


def exact_dist(models, prompt, prefix, params):
    rows = {}
    for role, m in models.items():
        m.rollback(0)
        rows[role] = m.eval(prompt[role] + prefix, 1)[0].copy()
    d = eft_distribution(
        *three_roles(rows["base"], rows["chat"], rows["reference"], params.alpha, params.beta), params, 512, base=rows["base"]
    )
    return dict(zip(d.ids.tolist(), d.probs.tolist()))


def expected(models, prompt, params):
    first = exact_dist(models, prompt, [], params)
    second: dict[int, float] = {}
    for x, px in first.items():
        for y, py in exact_dist(models, prompt, [x], params).items():
            second[y] = second.get(y, 0.0) + px * py
    return first, second


def chi2_pvalue(counts: Counter, probs: dict[int, float], n: int) -> float:
    assert set(counts) <= set(probs), "a token outside the EFT support was sampled"
    ids = sorted(probs)
    obs = np.array([counts.get(i, 0) for i in ids], float)
    exp = np.array([probs[i] for i in ids]) * n
    # pool rare cells so the chi-square approximation holds
    big = exp >= 5
    obs = np.append(obs[big], obs[~big].sum())
    exp = np.append(exp[big], exp[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("draft", [0, 1, 4, None])
def test_first_and_second_token_follow_exact_eft(engine, reference_models, name, draft):
    params = CONFIGS[name]
    engine.reset()  # evaluate the prompt as the reference does, not on top of another test's cache
    prompt = engine.prompt(raw="hello")
    first_p, second_p = expected(reference_models, prompt, params)
    cfg = GenerationConfig(sampling=params, max_tokens=5 if draft else 2, draft_tokens=draft)
    firsts, seconds = Counter(), Counter()
    drafted = accepted = 0
    for seed in range(N_SAMPLES):
        fin = list(engine.generate(prompt, cfg, np.random.default_rng([seed, 7])))[-1]
        firsts[fin.token_ids[0]] += 1
        seconds[fin.token_ids[1]] += 1
        drafted += fin.stats.drafted
        accepted += fin.stats.accepted
    assert chi2_pvalue(firsts, first_p, N_SAMPLES) > 1e-3
    assert chi2_pvalue(seconds, second_p, N_SAMPLES) > 1e-3
    if draft != 0:
        assert 0 < accepted < drafted  # both branches (accept and residual resample) were exercised


# -- tiny temperatures: the greedy limit, computed without overflow -------------------------
TINY = [1e-40, 5e-324, 1e-38, 3e-39, 1e-30]


@pytest.mark.parametrize("temperature", TINY)
@pytest.mark.parametrize(
    "filters", [{"top_p": 1.0}, {"top_p": 0.95}, {"min_p": 0.1, "top_p": 1.0}, {"top_k": 5}, {"typical_p": 0.5, "top_p": 1.0}]
)
def test_tiny_temperature_is_the_greedy_limit_without_warnings(temperature, filters):
    import warnings

    from eft_local.mix.sampling import distribution, sample

    z = np.random.default_rng(3).normal(size=2000).astype(np.float32) * 8
    z[-1] = -np.inf  # a masked id
    top = int(np.argmax(z))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/invalid-value warnings from NumPy
        d = distribution(z, SamplingParams(temperature=temperature, **filters))
        assert {sample(d, u) for u in (0.0, 0.3, 0.999999)} == {top}
        assert d.prob(top) == 1.0


@pytest.mark.parametrize("temperature", TINY)
def test_tiny_temperature_splits_exact_ties_evenly(temperature):
    from eft_local.mix.sampling import distribution, sample

    z = np.zeros(500, np.float32)
    z[[10, 400]] = 3.0
    d = distribution(z, SamplingParams(temperature=temperature, top_p=1.0))
    assert d.prob(10) == d.prob(400) == 0.5
    assert (sample(d, 0.2), sample(d, 0.8)) == (10, 400)
