"""The README's usage text is tested against the parser and the settings, so they cannot drift."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from eft_local.cli import build_parser
from eft_local.settings import GRID_KEYS, ROW_KEYS

README = Path(__file__).resolve().parents[1] / "README.md"


def command_flags(command: str) -> set[str]:
    """Every long option of ``eft-local COMMAND`` (what ``--help`` lists), ``--help`` aside."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {opt for a in sub.choices[command]._actions for opt in a.option_strings if opt.startswith("--")} - {"--help"}


def usage_block(command: str) -> str:
    """The README's fenced block that starts with ``eft-local COMMAND``."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if b.startswith(f"eft-local {command} ")]
    assert len(found) == 1, f"README.md needs exactly one usage block starting with `eft-local {command} `"
    return found[0]


def block_flags(block: str) -> set[str]:
    text = "\n".join(line.split("#", 1)[0] for line in block.splitlines())  # comments may name other commands
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


@pytest.mark.parametrize("command", ["run"])
def test_readme_usage_block_lists_exactly_the_parsers_flags(command):
    shown, real = block_flags(usage_block(command)), command_flags(command)
    assert not real - shown, f"README.md's `eft-local {command}` block lacks {sorted(real - shown)}"
    assert not shown - real, f"README.md's `eft-local {command}` block shows flags that do not exist: {sorted(shown - real)}"


def test_block_flags_sees_what_it_should():
    """The comparison above is only as good as the flag extraction: check it on a known line."""
    assert block_flags("eft-local run --a-b [--c2 X] ... # not --this\n  [--d-e=1]") == {"--a-b", "--c2", "--d-e"}


def test_readme_row_overrides_and_grid_keys_match_the_settings():
    text = " ".join(README.read_text(encoding="utf-8").split())
    rows = re.search(r"A `\.jsonl` row may override (.*?) and `weights`", text)
    assert rows, "README.md: the sentence listing JSONL row overrides is gone"
    assert set(re.findall(r"`(\w+)`", rows.group(1))) == set(ROW_KEYS)
    grid = re.search(r"KEY = (.*?) or\s*`weight\.NAME`", text)
    assert grid, "README.md: the sentence listing --grid keys is gone"
    assert set(re.findall(r"`(\w+)`", grid.group(1))) == set(GRID_KEYS)
