"""Errors of the engine and llama layers state the fact; each front end adds its own advice
(``settings.Fixable``/``advice``): a library caller never reads a flag it cannot type."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.prompt_check import PromptTooLong
from eft_local.settings import Fixable, advice, field_name

PACKAGE = Path(__file__).resolve().parents[2] / "eft_local"
# rpc.py parses the --rpc/--host flags themselves (its messages quote what the user typed)
FLAG_PARSERS = {PACKAGE / "llama" / "rpc.py"}


def raised_texts(path: Path) -> list[tuple[int, str]]:
    """The string parts of every ``raise`` in a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    out.append((node.lineno, sub.value))
    return out


def test_engine_and_llama_errors_name_no_command_line_flag():
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
        for layer in ("engine", "llama")
        for path in sorted((PACKAGE / layer).glob("*.py"))
        if path not in FLAG_PARSERS
        for line, text in raised_texts(path)
        if re.search(r"(^|\s)--[a-z]", text)
    ]
    assert not found, found


def test_each_front_end_words_the_fix_its_own_way():
    e = PromptTooLong(600, 512, "base")
    assert str(e) == "the prompt is 600 tokens for base but n_ctx is 512"  # the library's message: the fact
    assert advice(e) == str(e) + "; shorten it or raise --n-ctx"  # command line, batch rows, chat app
    assert advice(e, field_name) == str(e) + "; shorten it or raise the server's --n-ctx"  # an HTTP client
    spec = Fixable("speculation is impossible", "set {draft_tokens} to 0")
    assert advice(spec, field_name).endswith("set 'draft_tokens' to 0")  # a request field
    assert advice(ValueError("plain")) == "plain"


def test_a_finished_event_carries_the_fact_and_its_fix(engine):
    too_long = engine.prompt(raw="hello " * 600)
    fin = list(engine.generate(too_long, GenerationConfig(max_tokens=4), np.random.default_rng(0)))[-1]
    assert fin.reason == "error" and "--" not in fin.error and isinstance(fin.cause, PromptTooLong)
    assert fin.error_text() == fin.error + "; shorten it or raise --n-ctx"
    assert fin.error_text(field_name).endswith("raise the server's --n-ctx")
