"""EFT log-probabilities (engine/scoring.py, mix/logprobs.py) against an independent computation:
llama.cpp's own logits through llama-cpp-python's high-level ``Llama(logits_all=True)``, one
model at a time, combined and log-softmaxed in float64."""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import Llama

from eft_local.engine.decoder import EftEngine
from eft_local.engine.scoring import score_continuations, score_tokens
from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_model
from eft_local.mix.logprobs import token_logprobs
from eft_local.mix.params import SamplingParams

TOL = 2e-3  # float32 combine vs float64 reference, batched vs whole-sequence llama.cpp decodes


@pytest.fixture(scope="module")
def two_delta_paths(family, tmp_path_factory):
    """The family plus a second behaviour delta ``safe`` (sharing the main reference)."""
    d = tmp_path_factory.mktemp("scoring-deltas")
    safe = write_model(
        d / "safe.gguf",
        ModelSpec(name="safe", output_shift=0.9, shift_seed=33, chat_template=CHATML_TEMPLATE, eos_id=IM_END),
        seed=0,
    )
    return {**family.paths(), "safe": safe}


@pytest.fixture(scope="module")
def two_delta_engine(two_delta_paths):
    e = EftEngine.load(two_delta_paths, n_ctx=512, n_threads=1)
    yield e
    e.close()


def llama_logits(path, ids: list[int]) -> np.ndarray:
    """Every position's logits from llama-cpp-python's high-level API, float64."""
    llm = Llama(model_path=str(path), logits_all=True, flash_attn=True, n_ctx=512, n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def expected_logprobs(paths, weights: dict[str, float], ids: list[int], n_vocab: int) -> np.ndarray:
    """log softmax(Σ w_role · logits_role) in float64, row i predicting ids[i + 1]."""
    z = sum(w * llama_logits(paths[role], ids)[:, :n_vocab] for role, w in weights.items())
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def some_ids(engine: EftEngine, text: str) -> list[int]:
    return engine.chat.tokenize(text, add_bos=engine.chat.add_bos, special=False)


def test_echo_logprobs_with_two_deltas_match_llama_cpp_python(two_delta_engine, two_delta_paths):
    e = two_delta_engine
    params = SamplingParams(alpha=0.7, beta=1.4, weights={"safe": -0.3})
    coef = e.coefficients(params)  # per model: base β, chat α, safe λ, reference 1 − β − α − λ
    assert coef == pytest.approx({"base": 1.4, "chat": 0.7, "safe": -0.3, "reference": 1 - 1.4 - 0.7 + 0.3})
    ids = some_ids(e, "the quick brown fox jumps over the lazy dog, twice over")
    got = score_tokens(e, {name: ids for name in e.models}, len(ids) - 1, params, top_k=5)
    want = expected_logprobs(two_delta_paths, coef, ids, e.vocab.n)
    assert [g.token for g in got] == ids[1:]
    np.testing.assert_allclose([g.logprob for g in got], [want[i, t] for i, t in enumerate(ids[1:])], atol=TOL)
    for i, g in enumerate(got):  # top 5: the reference's best five, in order, same values
        best = np.argsort(-want[i], kind="stable")[:5]
        assert [t for t, _ in g.top][:2] == list(best[:2])
        np.testing.assert_allclose([lp for _, lp in g.top], want[i, best], atol=TOL)
        assert g.is_greedy == (g.token == int(best[0]))


def test_continuations_reuse_the_prompt_and_equal_whole_sequence_scores(engine):
    params = SamplingParams(alpha=1.3, beta=0.6)
    prompt_ids = some_ids(engine, "Question: what colour is the sky? Answer:")
    conts = [some_ids(engine, " blue")[1:] if engine.chat.add_bos else some_ids(engine, " blue"), [40, 41, 42]]
    prompt = {name: prompt_ids for name in engine.models}
    engine.reset()
    rows = score_continuations(engine, prompt, conts, params, top_k=2)
    for cont, row in zip(conts, rows):
        engine.reset()
        whole = score_tokens(engine, {n: prompt_ids + cont for n in engine.models}, len(cont), params)
        np.testing.assert_allclose([r.logprob for r in row], [w.logprob for w in whole], atol=1e-5)
    # the cache kept the prompt between continuations: only the last continuation's tail differs
    assert engine.models["base"].tokens[: len(prompt_ids)] == prompt_ids


def test_chunked_scoring_equals_one_chunk(family):
    """A sequence longer than n_batch is scored chunk by chunk with the same values."""
    e = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    try:
        ids = some_ids(e, "word " * 150)[:300]
        params = SamplingParams(alpha=0.5, beta=1.5)
        whole = score_tokens(e, {n: ids for n in e.models}, len(ids) - 1, params)
        for m in e.models.values():
            m.n_batch = 64  # smaller decode chunks (the context allows any size up to its own)
        e.reset()
        chunked = score_tokens(e, {n: ids for n in e.models}, len(ids) - 1, params)
        # llama.cpp's attention rounds differently per batch split past 256 cached cells: relative tolerance
        np.testing.assert_allclose([c.logprob for c in chunked], [w.logprob for w in whole], rtol=5e-3, atol=TOL)
    finally:
        e.close()


def test_bad_sequences_are_one_line_errors(engine):
    from eft_local.errors import UserError

    params = SamplingParams()
    with pytest.raises(UserError, match="outside the vocabulary"):
        score_tokens(engine, {n: [1, 2, 10**6] for n in engine.models}, 2, params)
    with pytest.raises(UserError, match="empty"):
        score_tokens(engine, {n: [1, 2] for n in engine.models}, 0, params)
    with pytest.raises(UserError, match="context holds"):
        score_tokens(engine, {n: [5] * 600 for n in engine.models}, 10, params)


def test_token_logprobs_top_and_greedy_are_one_expression():
    z = np.array([0.5, 2.0, -1.0, 2.0, -np.inf], np.float32)
    lp = token_logprobs(z, 1, k=3)
    exact = z.astype(np.float64) - np.log(np.exp(z.astype(np.float64)).sum())
    assert lp.logprob == pytest.approx(exact[1], abs=1e-6)
    assert lp.is_greedy and lp.top[0][1] == lp.logprob
    assert [t for t, _ in lp.top] == [1, 3, 0]
    assert not token_logprobs(z, 0).is_greedy
    masked = token_logprobs(z, 4, k=5)  # a masked id: finite for JSON, as vLLM reports it
    assert masked.logprob == -9999.0 and masked.top[-1] == (4, -9999.0)


@pytest.mark.parametrize(
    "draft_tokens,temperature,trace,alpha,beta",
    [
        (0, 0.9, False, 0.8, 1.3),
        (4, 0.9, False, 0.8, 1.3),
        (None, 0.0, True, 0.8, 1.3),
        (4, 0.9, True, 0.8, 1.3),
        (4, 0.9, False, 1.0, 0.0),
    ],
)
def test_generated_token_logprobs_come_from_verification_and_equal_scoring(engine, draft_tokens, temperature, trace, alpha, beta):
    """Also when the row the acceptance test combined is reused (``Targets.logprob``), and
    when no acceptance test ran (α = 1, β = 0: the drafter alone, every draft stands)."""
    from eft_local.engine.config import GenerationConfig
    from eft_local.engine.events import TokenEvent

    params = SamplingParams(alpha=alpha, beta=beta, temperature=temperature, top_p=0.9)
    config = GenerationConfig(sampling=params, max_tokens=20, draft_tokens=draft_tokens, logprobs=3, trace=trace)
    prompt_ids = some_ids(engine, "Once upon a time")
    engine.reset()
    events = list(engine.generate({n: prompt_ids for n in engine.models}, config, np.random.default_rng(7)))
    tokens = [ev for ev in events if isinstance(ev, TokenEvent) and ev.token_id >= 0]
    assert tokens and all(ev.logprob is not None and ev.logprob.token == ev.token_id for ev in tokens)
    ids = [ev.token_id for ev in tokens]
    engine.reset()
    scored = score_tokens(engine, {n: prompt_ids + ids for n in engine.models}, len(ids), params, top_k=3)
    np.testing.assert_allclose([ev.logprob.logprob for ev in tokens], [s.logprob for s in scored], atol=TOL)
    assert [[t for t, _ in ev.logprob.top] for ev in tokens] == [[t for t, _ in s.top] for s in scored]


def test_positions_on_several_threads_equal_one_thread(engine, monkeypatch):
    from eft_local.engine import scoring

    ids = some_ids(engine, "several threads share the positions of one chunk " * 3)
    params = SamplingParams(alpha=0.6, beta=1.7)
    seqs = {n: ids for n in engine.models}
    monkeypatch.setattr(scoring, "SCORING_THREADS", 1)
    engine.reset()
    one = score_tokens(engine, seqs, len(ids) - 1, params, top_k=3)
    monkeypatch.setattr(scoring, "SCORING_THREADS", 3)
    engine.reset()
    three = score_tokens(engine, seqs, len(ids) - 1, params, top_k=3)
    assert len(ids) - 1 >= 3 * scoring.MIN_POSITIONS_PER_THREAD and three == one  # the same float ops, in order
