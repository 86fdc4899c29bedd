"""Adaptive drafting: the block length from costs and acceptance, and the fallback to one model
per token when drafting cannot pay (issue 15: one file in every role ran "base alone" at half
the speed of "chat alone")."""

from __future__ import annotations

import numpy as np
import pytest

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.draft_control import DraftController
from eft_local.engine.events import FinishedEvent
from eft_local.engine.scheduler import Scheduler
from eft_local.mix.params import SamplingParams

BASE_ALONE_GREEDY = SamplingParams(alpha=0.0, beta=1.0, temperature=0.0)
BASE_ALONE_SAMPLED = SamplingParams(alpha=0.0, beta=1.0, temperature=0.8, top_p=0.95)


def test_a_drafter_as_dear_as_the_verifiers_never_drafts():
    ctl = DraftController(draft_cost=1.0, verify_cost=1.0, direct_cost=1.0)
    ctl.update(16, 16)  # even after perfect acceptance
    assert all(ctl.direct() for _ in range(100))


def test_a_cheap_drafter_drafts_and_a_drafter_in_the_mixture_always_does():
    assert not DraftController(draft_cost=1.0, verify_cost=14.0, direct_cost=14.0).direct()
    assert not DraftController(draft_cost=1.0, verify_cost=1.0, direct_cost=None).direct()


def test_low_acceptance_falls_back_then_probes_again():
    ctl = DraftController(draft_cost=1.0, verify_cost=2.0, direct_cost=2.0, probe_every=5)
    assert not ctl.direct()  # the prior (0.75 acceptance) says drafting pays
    for _ in range(6):
        ctl.update(4, 0)
    assert [ctl.direct() for _ in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]
    for _ in range(3):
        ctl.update(8, 8)  # the probes found the text predictable again
    assert not ctl.direct()


@pytest.fixture(scope="module")
def one_file_engine(family):
    engine = EftEngine.load({"base": family.chat, "chat": family.chat, "reference": family.chat}, n_ctx=256, n_threads=1)
    yield engine
    engine.close()


def generate(engine, prompt, sampling, draft, seed=0, n=20) -> FinishedEvent:
    cfg = GenerationConfig(sampling=sampling, max_tokens=n, draft_tokens=draft)
    return list(engine.generate(prompt, cfg, np.random.default_rng(seed)))[-1]


def test_one_file_in_every_role_runs_one_model_per_token(one_file_engine):
    engine = one_file_engine
    assert len(engine.models) == 2  # the chat context (templated) and one plain one
    engine.reset()
    prompt = engine.prompt(raw="the answer is")
    drafter = engine.models[engine.model_of["chat"]]
    fin = generate(engine, prompt, BASE_ALONE_GREEDY, None)
    assert fin.reason == "length" and fin.stats.drafted == 0 and fin.stats.rounds == 0
    assert drafter.n_past == len(prompt[engine.model_of["chat"]])  # the drafter never ran after its prompt
    assert fin.token_ids == generate(engine, prompt, BASE_ALONE_GREEDY, 0).token_ids  # same text as naive


def test_one_model_per_token_samples_the_mixture(one_file_engine):
    """Direct draws are draws from p: the first token's frequencies match the base's own softmax."""
    from scipy import stats

    from eft_local.mix.sampling import eft_distribution

    engine = one_file_engine
    prompt = engine.prompt(raw="you and I")
    base = engine.models[engine.model_of["base"]]
    base.rollback(0)
    row = base.eval(prompt[engine.model_of["base"]], 1)[0].copy()
    p = eft_distribution([row], [1.0], BASE_ALONE_SAMPLED, engine.vocab.n, engine.vocab.masked).dense(engine.vocab.n)
    counts = np.zeros(engine.vocab.n)
    for seed in range(600):
        counts[generate(engine, prompt, BASE_ALONE_SAMPLED, None, seed=seed, n=1).token_ids[0]] += 1
    support = p > 0
    assert counts[~support].sum() == 0
    big = p * 600 >= 5
    observed = np.append(counts[big], counts[support & ~big].sum())
    expected = np.append(p[big], p[support & ~big].sum()) * 600
    assert stats.chisquare(observed[expected > 0], expected[expected > 0]).pvalue > 1e-3


def test_a_smaller_drafter_outside_the_mixture_still_drafts(engine):
    engine.reset()
    prompt = engine.prompt(raw="the answer is")
    fin = generate(engine, prompt, BASE_ALONE_GREEDY, None, n=40)
    assert fin.stats.drafted > 0  # at least the probes
    assert fin.token_ids == generate(engine, prompt, BASE_ALONE_GREEDY, 0, n=40).token_ids


def test_one_model_per_token_under_the_scheduler(family):
    engine = EftEngine.load({"base": family.chat, "chat": family.chat, "reference": family.chat}, n_ctx=256, n_threads=1, n_seq=2)
    try:
        prompt = engine.prompt(raw="the answer is")
        cfg = GenerationConfig(sampling=BASE_ALONE_GREEDY, max_tokens=12, draft_tokens=None)
        jobs = [(i, lambda: (prompt, cfg, np.random.default_rng(0))) for i in range(2)]
        done = dict(Scheduler(engine).run_all(jobs))
        naive = GenerationConfig(sampling=BASE_ALONE_GREEDY, max_tokens=12, draft_tokens=0)
        engine.reset()
        want = list(engine.generate(prompt, naive, np.random.default_rng(0)))[-1].token_ids
        assert [done[i].token_ids for i in range(2)] == [want, want] and done[0].stats.drafted == 0
    finally:
        engine.close()


def test_one_model_per_token_reports_deltas_and_stops_at_max_tokens(one_file_engine):
    from eft_local.engine.events import TokenEvent

    engine = one_file_engine
    prompt = engine.prompt(raw="the answer is")
    cfg = GenerationConfig(sampling=BASE_ALONE_SAMPLED, max_tokens=7, draft_tokens=None, trace=True)
    events = list(engine.generate(prompt, cfg, np.random.default_rng(3)))
    tokens = [e for e in events if isinstance(e, TokenEvent) and e.token_id >= 0]
    assert events[-1].reason in ("length", "stop") and len(tokens) <= 7
    assert all(e.delta is not None for e in tokens)


def test_greedy_naive_rounds_skip_a_drafter_outside_the_mixture(engine, family):
    """Greedy base alone: argmax p whatever the drafter says, so the drafter never decodes
    after its prompt, and the text is plain llama.cpp's greedy text of the base."""
    engine.reset()
    prompt = engine.prompt(raw="you and I were there")
    drafter = engine.models[engine.model_of["chat"]]
    fin = generate(engine, prompt, BASE_ALONE_GREEDY, 0, n=16)
    assert drafter.n_past == len(prompt[engine.model_of["chat"]])
    sampled = generate(engine, prompt, SamplingParams(alpha=0.0, beta=1.0, temperature=0.5), 0, n=4)
    assert sampled.reason == "length" and drafter.n_past > len(prompt[engine.model_of["chat"]])  # sampled rounds still draft
    assert len(fin.token_ids) == 16 or fin.reason == "stop"
