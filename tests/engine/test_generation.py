"""The generation run's shape: public interface for the scheduler, all state born in __init__,
one prompt check with one text for the decoder and the session."""

from __future__ import annotations

import ast
import inspect
import tracemalloc

import numpy as np
import pytest

from eft_local.engine import generation, scheduler
from eft_local.engine.config import GenerationConfig
from eft_local.engine.eft_engine import EftEngine
from eft_local.engine.generation import Generation
from eft_local.engine.session import PromptTooLong, Session
from eft_local.errors import UserError
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS


def _self_assignments(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                    names.add(el.attr)
    return names


def test_generation_state_is_all_created_in_init():
    cls = next(n for n in ast.parse(inspect.getsource(generation)).body if isinstance(n, ast.ClassDef) and n.name == "Generation")
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    born = _self_assignments(methods.pop("__init__"))
    later = {name: _self_assignments(f) - born for name, f in methods.items()}
    assert not {k: v for k, v in later.items() if v}, "attributes first assigned outside __init__"
    assert {"plan", "controller", "pending", "held"} <= born


def base_blocks(engine, monkeypatch) -> list[int]:
    """Every span the base model verifies in a decode (n_logits = drafts + 1), recorded."""
    base = engine.models[engine.model_of["base"]]
    seen: list[int] = []
    real = type(base).eval_many

    def spy(items):
        seen.extend(n for _, tokens, n in items if n > 1)  # a prompt chunk asks for one row
        return real(base, items)

    monkeypatch.setattr(base, "eval_many", spy)
    return seen


@pytest.mark.parametrize("k", [2, 5])
def test_an_adaptive_generation_drafts_the_block_length_its_driver_chooses(engine, monkeypatch, k):
    """``block_length`` (a scheduler's shared choice) sets every adaptive round's k."""
    blocks = base_blocks(engine, monkeypatch)
    engine.reset()
    cfg = GenerationConfig(SamplingParams(temperature=0.0), max_tokens=40)
    run = Generation(engine, engine.prompt(raw="hello world"), cfg, np.random.default_rng(0), block_length=lambda: k)
    fin = list(run.events())[-1]
    assert fin.reason == "length" and run.stats.rounds >= 5
    # every round verifies k + 1 rows but the first (nothing pending yet) and the last few (max_tokens)
    assert max(blocks) == k + 1 and blocks.count(k + 1) >= len(blocks) - 1 - k


@pytest.mark.parametrize("k", [2, 5])
def test_the_scheduler_s_block_length_reaches_every_sequence(monkeypatch, family, k):
    """The scheduler plans one k per round for all adaptive sequences; each verifies that many."""
    shared = EftEngine.load(family.paths(), n_ctx=256, n_threads=1, n_seq=2)
    try:
        monkeypatch.setattr(scheduler, "batch_k", lambda *_a, **_k: k)
        blocks = base_blocks(shared, monkeypatch)
        cfg = GenerationConfig(SamplingParams(temperature=0.0), max_tokens=30)
        jobs = [
            (i, lambda t=t, i=i: (shared.prompt(raw=t), cfg, np.random.default_rng(i))) for i, t in enumerate(["hi", "the end"])
        ]
        done = dict(scheduler.Scheduler(shared).run_all(jobs))
        assert all(f.reason == "length" for f in done.values())
        assert max(blocks) == k + 1 and blocks.count(k + 1) >= len(blocks) - 2 * (1 + k)  # per sequence, as above
    finally:
        shared.close()


def test_bad_settings_fail_at_construction_and_become_an_error_event(engine):
    prompt = engine.prompt(raw="hello")
    cfg = GenerationConfig(sampling=SamplingParams(weights={"nope": 1.0}), max_tokens=4)
    with pytest.raises(UserError, match="nope"):
        Generation(engine, prompt, cfg, np.random.default_rng(0))
    fin = list(engine.generate(prompt, cfg, np.random.default_rng(0)))[-1]
    assert fin.reason == "error" and "nope" in fin.error


def test_prompt_checks_say_the_same_in_the_decoder_and_the_session(engine):
    too_long = engine.prompt(raw="hello " * 600)
    with pytest.raises(PromptTooLong) as session_error:
        Session(engine).prompt(raw="hello " * 600)
    fin = list(engine.generate(too_long, GenerationConfig(max_tokens=4), np.random.default_rng(0)))[-1]
    assert fin.reason == "error" and fin.error == str(session_error.value)
    empty = {name: [] for name in engine.models}
    fin = list(engine.generate(empty, GenerationConfig(max_tokens=4), np.random.default_rng(0)))[-1]
    assert fin.error == "the prompt is empty: nothing to generate from"


def peak_bytes(engine, max_tokens: int, draft_tokens: int | None) -> tuple[int, list[int]]:
    """Peak Python/NumPy memory of a generation cancelled after its first rounds, and its tokens."""
    rounds = iter(range(4))
    cfg = GenerationConfig(SamplingParams(temperature=0.7), max_tokens=max_tokens, draft_tokens=draft_tokens)
    engine.reset()
    tracemalloc.start()
    try:
        events = list(
            engine.generate(engine.prompt(raw="hello"), cfg, np.random.default_rng(3), cancel=lambda: next(rounds, 9) == 9)
        )
        return tracemalloc.get_traced_memory()[1], events[-1].token_ids
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("draft_tokens", [0, None])
def test_memory_does_not_grow_with_max_tokens_beyond_the_context(engine, draft_tokens):
    """The per-position uniforms (and every other table) are bounded by the context: asking for
    2^24 tokens costs what asking for n_ctx does, and draws the same numbers (same tokens)."""
    n_ctx = min(m.n_ctx for m in engine.models.values())
    at_ctx, tokens = peak_bytes(engine, n_ctx, draft_tokens)
    at_max, same = peak_bytes(engine, SETTINGS["max_tokens"].hi, draft_tokens)
    assert same == tokens and len(tokens) > 0
    assert at_max <= at_ctx + 64 * 1024, f"{at_max - at_ctx} bytes more for max_tokens 2^24"
