"""The generation run's shape: public interface for the scheduler, all state born in __init__,
one prompt check with one text for the decoder and the session."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from eft_local.engine import decoder, scheduler
from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import Generation
from eft_local.engine.session import PromptTooLong, Session
from eft_local.errors import UserError
from eft_local.mix.params import SamplingParams


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
    cls = next(n for n in ast.parse(inspect.getsource(decoder)).body if isinstance(n, ast.ClassDef) and n.name == "Generation")
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    born = _self_assignments(methods.pop("__init__"))
    later = {name: _self_assignments(f) - born for name, f in methods.items()}
    assert not {k: v for k, v in later.items() if v}, "attributes first assigned outside __init__"
    assert {"plan", "controller", "pending", "held"} <= born


def test_scheduler_uses_only_public_names_of_the_decoder():
    tree = ast.parse(inspect.getsource(scheduler))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert not [n for n in imported if n.startswith("_")]
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)}
    assert "k_source" not in attrs
    assert "hasattr" not in inspect.getsource(scheduler)


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
