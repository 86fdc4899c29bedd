"""Esc pressed fast after an Alt-combo never types a caret (tui/escape_keys.py)."""

from __future__ import annotations

import pytest

from eft_local.tui.app import EftChatApp


# -- Esc pressed fast after an Alt-combo: no literal "^" in the prompt ---------------------------
@pytest.mark.parametrize(
    "data,keys",
    [
        ("\x1b[\x1b", ["escape", "left_square_bracket"]),  # Alt+[ then Esc
        ("\x1bO\x1b", ["escape", "O"]),  # Alt+Shift+O then Esc
        ("\x1b[1;\x1b", ["escape", "left_square_bracket", "1", "semicolon"]),
        ("\x1b[^\x1b", ["escape", "left_square_bracket", "circumflex_accent"]),  # a real caret inside stays
        ("\x1b[" + "1" * 40, ["escape", "left_square_bracket"] + ["1"] * 31),  # over-long sequence
        ("^", ["circumflex_accent"]),
        ("a^^b", ["a", "circumflex_accent", "circumflex_accent", "b"]),
        ("\x1b[5^", ["ctrl+pageup"]),
        ("\x1b[A", ["up"]),
    ],
)
def test_fast_escape_combos_never_type_a_caret(data, keys):
    from eft_local.tui.escape_keys import EscapeSafeParser

    got = [e.key for e in EscapeSafeParser().feed(data)]
    assert got[: len(keys)] == keys


def test_run_chat_installs_the_escape_safe_parser(tui_family, monkeypatch):
    from textual.drivers import linux_driver

    from eft_local.tui import run_chat
    from eft_local.tui.escape_keys import EscapeSafeParser

    monkeypatch.setattr(linux_driver, "XTermParser", linux_driver.XTermParser)  # restored afterwards
    monkeypatch.setattr(EftChatApp, "run", lambda self, **kw: None)
    run_chat(paths=tui_family.paths())
    assert linux_driver.XTermParser is EscapeSafeParser
