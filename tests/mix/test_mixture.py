"""Several behaviour deltas: the N-delta formula, shared and skipped models, --grid, profiles.

z = reference + β·(base − reference) + Σ_i α_i·(chat_i − reference_i)
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from eft_local.cli import main
from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_model
from eft_local.mix.mixture import Delta, coefficients, deltas_of
from eft_local.mix.params import SamplingParams
from tests.mix.test_distribution import chi2_pvalue


@pytest.fixture(scope="module")
def mix_paths(family, tmp_path_factory):
    """The family plus a second chat model ("safe", own template) and a delta with its own reference."""
    d = tmp_path_factory.mktemp("mix")
    safe = write_model(
        d / "safe.gguf",
        ModelSpec(name="safe", output_shift=0.9, shift_seed=33, chat_template=CHATML_TEMPLATE, eos_id=IM_END),
        seed=0,
    )
    terse = write_model(
        d / "terse.gguf",
        ModelSpec(name="terse", output_shift=0.7, shift_seed=44, chat_template=CHATML_TEMPLATE, eos_id=IM_END),
        seed=0,
    )
    terse_ref = write_model(d / "terse-ref.gguf", ModelSpec(name="terse-ref", output_shift=0.4, shift_seed=55), seed=0)
    return {**family.paths(), "safe": safe, "terse": terse, "terse.reference": terse_ref}


@pytest.fixture(scope="module")
def mix_engine(mix_paths):
    e = EftEngine.load(mix_paths, n_ctx=256, n_threads=1)
    yield e
    e.close()


@pytest.fixture(scope="module")
def solo_models(mix_paths):
    """Every role's model in its own context: the independent evaluation."""
    models = {r: LlamaModel(p, n_ctx=256, n_threads=1) for r, p in mix_paths.items()}
    yield models
    for m in models.values():
        m.close()


def formula(rows: dict[str, np.ndarray], alpha: float, beta: float, weights: dict[str, float]) -> np.ndarray:
    ref = rows["reference"].astype(np.float64)
    z = ref + beta * (rows["base"] - ref) + alpha * (rows["chat"] - ref)
    z += weights.get("safe", 1.0) * (rows["safe"] - ref)
    z += weights.get("terse", 1.0) * (rows["terse"] - rows["terse.reference"])
    return z


WEIGHTS = [
    (1.0, 1.0, {"safe": 0.5, "terse": 0.0}),
    (0.7, 1.2, {"safe": -0.4, "terse": 0.6}),
    (0.0, 1.0, {"safe": 1.0, "terse": -1.0}),
    (0.0, 0.0, {"safe": 0.0, "terse": 1.5}),
]


@pytest.mark.parametrize("alpha,beta,weights", WEIGHTS)
@pytest.mark.parametrize("draft", [0, None])
def test_greedy_is_argmax_of_n_delta_formula(mix_engine, solo_models, alpha, beta, weights, draft):
    mix_engine.reset()
    params = SamplingParams(alpha=alpha, beta=beta, temperature=0.0, weights=weights)
    prompt = mix_engine.prompt(messages=[{"role": "user", "content": "hello there"}])
    fin = list(
        mix_engine.generate(
            prompt, GenerationConfig(sampling=params, max_tokens=12, draft_tokens=draft), np.random.default_rng(0)
        )
    )[-1]
    assert fin.reason in ("stop", "length") and fin.token_ids
    role_prompt = {r: prompt[mix_engine.model_of[r]] for r in solo_models}
    n = mix_engine.vocab.n
    for i, tok in enumerate(fin.token_ids):
        rows = {}
        for role, m in solo_models.items():
            m.rollback(0)
            rows[role] = m.eval(role_prompt[role] + fin.token_ids[:i], 1)[0][:n].copy()
        z = formula(rows, alpha, beta, weights)
        top2 = np.sort(z)[-2:]
        assert tok == int(np.argmax(z)) or top2[1] - top2[0] < 1e-3, f"step {i}"


def test_every_block_length_gives_the_same_tokens_with_two_deltas(mix_engine):
    """Speculative runs agree for one seed whatever the block length; a naive run (which draws
    from p directly, another stream of the same distribution) repeats itself."""
    params = SamplingParams(alpha=0.8, beta=1.0, temperature=0.9, top_p=0.95, weights={"safe": 0.5, "terse": -0.3})
    prompt = mix_engine.prompt(raw="the answer is")
    outs = []
    for draft in (3, None, 0, 0):
        cfg = GenerationConfig(sampling=params, max_tokens=24, draft_tokens=draft)
        outs.append(list(mix_engine.generate(prompt, cfg, np.random.default_rng([5, 0])))[-1].token_ids)
    assert outs[0] == outs[1] and outs[2] == outs[3]


def test_coefficients_sum_exactly_and_share_models():
    deltas = deltas_of(["base", "reference", "chat", "a", "b", "b.reference"])
    model_of = {"base": "base", "reference": "reference", "chat": "chat", "a": "chat", "b": "b", "b.reference": "b.reference"}
    w = {"chat": 0.3, "a": 0.2, "b": 0.5}
    coef = coefficients(deltas, w.__getitem__, 0.5, model_of)
    assert coef == {"base": 0.5, "reference": 0.0, "chat": 0.5, "b": 0.5, "b.reference": -0.5}
    assert deltas[0] == Delta("chat", "chat", "reference")
    assert sum(coef.values()) == 1.0


def count_decodes(engine, monkeypatch) -> Counter:
    """Tokens decoded per distinct model (context) of ``engine``."""
    counts: Counter = Counter()
    for name, model in engine.models.items():
        orig = model._decode

        def counted(batch, _orig=orig, _name=name):
            counts[_name] += sum(len(span.tokens) for span in batch)
            return _orig(batch)

        monkeypatch.setattr(model, "_decode", counted)
    return counts


def test_shared_reference_is_one_context_decoded_once_per_position(mix_paths, monkeypatch):
    paths = {**mix_paths, "safe2": mix_paths["safe"]}  # the same file named for two deltas
    paths.pop("terse"), paths.pop("terse.reference")
    engine = EftEngine.load(paths, n_ctx=256, n_threads=1)
    try:
        assert set(engine.models) == {"chat", "safe", "base", "reference"}
        assert engine.roles["safe2"] is engine.roles["safe"]
        counts = count_decodes(engine, monkeypatch)
        prompt = engine.prompt(raw="hello")
        cfg = GenerationConfig(
            sampling=SamplingParams(temperature=0.0, weights={"safe": 0.5, "safe2": 0.5}), max_tokens=10, draft_tokens=0
        )
        fin = list(engine.generate(prompt, cfg, np.random.default_rng(0)))[-1]
        positions = len(prompt["reference"]) + fin.stats.n_tokens
        assert positions - 1 <= counts["reference"] <= positions  # once per position, not once per delta
        assert counts["safe"] == counts["reference"]
    finally:
        engine.close()


@pytest.mark.parametrize("draft", [0, None])
def test_zero_weight_models_are_never_decoded(mix_engine, monkeypatch, draft):
    mix_engine.reset()
    counts = count_decodes(mix_engine, monkeypatch)
    # chat alone: α=1, β=0, other deltas 0 -> only the chat model runs (it also drafts)
    params = SamplingParams(alpha=1.0, beta=0.0, temperature=0.0, weights={"safe": 0.0, "terse": 0.0})
    prompt = mix_engine.prompt(raw="hello")
    fin = list(
        mix_engine.generate(
            prompt, GenerationConfig(sampling=params, max_tokens=10, draft_tokens=draft), np.random.default_rng(0)
        )
    )[-1]
    assert fin.token_ids
    assert set(counts) == {"chat"}
    # β = 0 with a delta: the large base never runs
    counts.clear()
    params = SamplingParams(alpha=1.0, beta=0.0, temperature=0.0, weights={"safe": 0.5, "terse": 0.0})
    list(
        mix_engine.generate(prompt, GenerationConfig(sampling=params, max_tokens=6, draft_tokens=draft), np.random.default_rng(0))
    )
    assert "base" not in counts and "terse" not in counts and counts["reference"] > 0


@pytest.mark.parametrize("draft", [0, None])
def test_sampled_first_token_follows_two_delta_mixture(mix_engine, solo_models, draft):
    params = SamplingParams(alpha=0.6, beta=1.0, temperature=1.0, top_k=8, weights={"safe": 0.8, "terse": -0.5}, top_p=1.0)
    mix_engine.reset()
    prompt = mix_engine.prompt(raw="hello")
    rows = {}
    for role, m in solo_models.items():
        m.rollback(0)
        rows[role] = m.eval(prompt[mix_engine.model_of[role]], 1)[0][: mix_engine.vocab.n].astype(np.float64)
    z = formula(rows, params.alpha, params.beta, params.weights)
    top = np.argsort(-z)[:8]
    p = np.exp(z[top] - z[top].max())
    expect = dict(zip(top.tolist(), (p / p.sum()).tolist()))
    cfg = GenerationConfig(sampling=params, max_tokens=4 if draft is None else 1, draft_tokens=draft)
    n = 1500
    firsts = Counter(list(mix_engine.generate(prompt, cfg, np.random.default_rng([s, 3])))[-1].token_ids[0] for s in range(n))
    assert chi2_pvalue(firsts, expect, n) > 1e-3


def test_draft_with_picks_the_drafter_and_keeps_the_output(mix_engine):
    params = SamplingParams(alpha=1.0, beta=1.0, temperature=0.0, weights={"safe": 0.3, "terse": 0.2})
    prompt = mix_engine.prompt(raw="hello")
    outs = [
        list(
            mix_engine.generate(
                prompt, GenerationConfig(sampling=params, max_tokens=10, draft_tokens=4, draft_with=who), np.random.default_rng(0)
            )
        )[-1]
        for who in (None, "safe", "terse")
    ]
    assert outs[0].token_ids == outs[1].token_ids == outs[2].token_ids
    bad = list(mix_engine.generate(prompt, GenerationConfig(sampling=params, draft_with="nope"), np.random.default_rng(0)))[-1]
    assert bad.reason == "error" and "nope" in bad.error


# -- command line ---------------------------------------------------------------------------
@pytest.fixture()
def mix_args(mix_paths):
    p = mix_paths
    return [
        "--base",
        str(p["base"]),
        "--chat",
        str(p["chat"]),
        "--reference",
        str(p["reference"]),
        "--delta",
        f"safe={p['safe']}",
        "--delta",
        f"terse={p['terse']}",
        "--delta-reference",
        f"terse={p['terse.reference']}",
        "--threads",
        "1",
        "--n-ctx",
        "256",
    ]


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grid_rows_are_ordered_and_equal_separate_runs(tmp_path, mix_args):
    pf = tmp_path / "p.jsonl"
    pf.write_text("\n".join(json.dumps({"prompt": t}) for t in ("hello", "the answer is")) + "\n")
    out = tmp_path / "grid.jsonl"
    common = ["--prompt-file", str(pf), *mix_args, "--seed", "4", "--max-tokens", "8", "--temperature", "0.8"]
    assert main(["run", *common, "--output", str(out), "--grid", "beta=1,1.5", "--grid", "weight.safe=0,-0.5"]) == 0
    got = rows_of(out)
    assert [(r["prompt"], r["beta"], r["weights"]["safe"]) for r in got] == [
        (p, b, s) for p in ("hello", "the answer is") for b in (1.0, 1.5) for s in (0.0, -0.5)
    ]
    assert all(r["weights"] == {"safe": r["weights"]["safe"], "terse": 1.0} and r["alpha"] == 1.0 for r in got)
    single = tmp_path / "single.jsonl"
    assert main(["run", *common, "--output", str(single), "--beta", "1.5", "--weight", "safe=-0.5"]) == 0
    alone = rows_of(single)
    assert [r["token_ids"] for r in alone] == [got[3]["token_ids"], got[7]["token_ids"]]


def test_jsonl_row_overrides(tmp_path, mix_args):
    pf = tmp_path / "p.jsonl"
    pf.write_text(
        json.dumps({"prompt": "hello", "alpha": 0.5, "beta": 2, "weights": {"safe": -1}, "max_tokens": 3, "temperature": 0})
        + "\n"
        + json.dumps({"prompt": "hello", "temperature": float("nan")}).replace("NaN", "1e999")
        + "\n"
        + json.dumps({"prompt": "hello", "weights": {"nobody": 1}})
        + "\n"
    )
    out = tmp_path / "o.jsonl"
    main(["run", "--prompt-file", str(pf), "--output", str(out), *mix_args, "--max-tokens", "5"])
    first, inf_row, unknown = rows_of(out)
    assert (first["alpha"], first["beta"], first["weights"]) == (0.5, 2.0, {"safe": -1.0, "terse": 1.0})
    assert first["n_tokens"] <= 3 and first["finish_reason"] in ("stop", "length")
    assert inf_row["finish_reason"] == "error" and "temperature" in inf_row["error"]
    assert unknown["finish_reason"] == "error" and "nobody" in unknown["error"]


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--delta", "safe"], "NAME=CHAT.gguf"),
        (["--weight", "ghost=1"], "ghost"),
        (["--grid", "weight.ghost=0,1"], "--grid weight.ghost"),
        (["--weight", "safe=nan"], "finite"),
        (["--grid", "colour=1,2"], "unknown key"),
        (["--grid", "beta=1,inf"], "finite"),
        (["--draft-with", "ghost"], "ghost"),
        (["--delta-reference", "ghost=x.gguf"], "ghost"),
        (["--delta", "base=x.gguf"], "delta name"),
    ],
)
def test_bad_mixture_flags_fail_in_one_line_before_loading(tmp_path, mix_args, capsys, extra, expect):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    assert main(["run", "--prompt-file", str(pf), *mix_args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "loading" not in err[0]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--alpha", "nan"),
        ("--beta", "inf"),
        ("--temperature", "-inf"),
        ("--seed", "-1"),
        ("--threads", "0"),
        ("--threads", "1000"),
        ("--top-p", "0"),
        ("--n-ctx", "-5"),
        ("--max-tokens", "1.5"),
    ],
)
def test_bad_numbers_name_the_flag(tmp_path, mix_args, capsys, flag, value):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    assert main(["run", "--prompt-file", str(pf), *mix_args, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


@pytest.mark.parametrize(
    "extra", [["--alpha=1e30"], ["--beta=-2000"], ["--weight", "safe=1e5"], ["--grid", "weight.safe=0,5000"]]
)
def test_weights_that_would_overflow_the_logits_are_refused(tmp_path, mix_args, capsys, extra):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    assert main(["run", "--prompt-file", str(pf), *mix_args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1000" in err[0]
