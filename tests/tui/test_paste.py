"""A bracketed paste that never ends is ended; Ctrl+Q/Ctrl+C end it."""

from __future__ import annotations

import pytest
from textual import events

from eft_local.tui import escape_keys
from eft_local.tui.escape_keys import EscapeSafeParser


# -- item 21: a bracketed paste that never ends ----------------------------------------------------
def keys_and_pastes(tokens) -> list[str]:
    out = []
    for t in tokens:
        if isinstance(t, events.Paste):
            out.append(f"paste:{t.text}")
        elif isinstance(t, events.Key):
            out.append(t.key)
    return out


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(escape_keys, "get_time", lambda: now[0])
    return now


@pytest.mark.parametrize("key,name", [("\x11", "ctrl+q"), ("\x03", "ctrl+c")])
def test_ctrl_q_and_ctrl_c_end_an_unterminated_paste(clock, key, name):
    parser = EscapeSafeParser()
    assert keys_and_pastes(parser.feed("\x1b[200~half a paste")) == []
    assert keys_and_pastes(parser.feed(key)) == ["paste:half a paste", name]
    assert keys_and_pastes(parser.feed("x")) == ["x"]  # typing works again


def test_a_paste_without_end_is_ended_after_a_short_idle_time(clock):
    parser = EscapeSafeParser()
    assert keys_and_pastes(parser.feed("\x1b[200~line one\nline")) == []
    clock[0] += escape_keys.PASTE_IDLE_SECONDS / 2
    assert keys_and_pastes(parser.tick()) == []  # still arriving: a slow link may pause briefly
    assert keys_and_pastes(parser.feed(" two")) == []
    clock[0] += escape_keys.PASTE_IDLE_SECONDS
    assert keys_and_pastes(parser.tick()) == ["paste:line one\nline two"]
    assert keys_and_pastes(parser.feed("\x1b[201~")) == []  # a late closing bracket is harmless
    assert keys_and_pastes(parser.feed("ab")) == ["a", "b"]


def test_a_terminated_paste_is_unchanged(clock):
    parser = EscapeSafeParser()
    got = keys_and_pastes(parser.feed("x\x1b[200~hello\n\tworld\x1b[201~y"))
    assert got == ["x", "paste:hello\n\tworld", "y"]
    clock[0] += 10
    assert keys_and_pastes(parser.tick()) == []
