"""A bracketed paste that never ends is ended; Ctrl+Q/Ctrl+C typed on their own end it; a paste's
control characters are text (never keys) and never reach the prompt."""

from __future__ import annotations

import pytest
from textual import events

from eft_local.tui import escape_keys
from eft_local.tui.escape_keys import EscapeSafeParser
from tests.tui.conftest import SIZE, no_models_app


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


# -- issue 23 item 13: a paste of control characters is text, never keys; it never ends the app ----
CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]
KEPT = {"\t": "\t", "\n": "\n", "\r": "\n"}  # whitespace a prompt holds; a carriage return ends a line


def bracketed(text: str) -> str:
    return escape_keys.PASTE_START + text + escape_keys.PASTE_END


@pytest.mark.parametrize("char", CONTROLS, ids=[f"{ord(c):#04x}" for c in CONTROLS])
def test_each_control_character_in_a_paste_is_pasted_text_not_a_key(clock, char):
    parser = EscapeSafeParser()
    assert keys_and_pastes(parser.feed(bracketed(f"a{char}b"))) == [f"paste:a{char}b"]
    assert keys_and_pastes(parser.feed(bracketed(char))) == [f"paste:{char}"]  # alone in its paste too
    assert keys_and_pastes(parser.feed("x")) == ["x"]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"{ord(c):#04x}" for c in CONTROLS])
def test_printable_drops_each_control_character_but_line_ends_and_tabs(char):
    assert escape_keys.printable(f"a{char}b") == f"a{KEPT.get(char, '')}b"


def test_printable_keeps_text_and_makes_every_line_end_a_newline():
    assert escape_keys.printable("x\r\ny\rz\n\tü😀\x85\x9b") == "x\ny\nz\n\tü😀"


@pytest.mark.parametrize(
    "inner",
    [
        "".join(CONTROLS),  # every control character at once (Ctrl+Q and Ctrl+C among them)
        "hello\x11world\x03!",
        "\x1b[A\x1bOP\x1b\x1b",  # escape sequences of keys: arrows, F1, a lone Esc
        "\x1b" + "q\x11" * 40,  # an over-long sequence, reissued as keys by Textual's parser
        "\x1b[200~nested",  # a paste start inside a paste
        "\x1b[201",  # half a closing sequence
    ],
)
def test_a_paste_with_escape_sequences_is_one_paste_and_no_keys(clock, inner):
    parser = EscapeSafeParser()
    assert keys_and_pastes(parser.feed("a" + bracketed(inner) + "b")) == ["a", f"paste:{inner}", "b"]
    clock[0] += 10
    assert keys_and_pastes(parser.tick()) == []


def test_a_paste_split_across_reads_is_still_text(clock):
    parser = EscapeSafeParser()
    got = []
    for part in ("\x1b[200~one\x11", "\x1b", "[A\x03two\x1b[2", "01~"):
        got += keys_and_pastes(parser.feed(part))
    assert got == ["paste:one\x11\x1b[A\x03two"]


@pytest.mark.parametrize("char", CONTROLS[1:], ids=[f"{ord(c):#04x}" for c in CONTROLS[1:]])
def test_outside_a_paste_each_control_character_is_still_its_key(char):
    keys = [t for t in EscapeSafeParser().feed(char) if isinstance(t, events.Key)]
    if char == "\x1b":  # a lone Esc waits for the rest of a sequence
        return
    assert len(keys) == 1 and keys[0].character == char


async def test_a_pasted_control_character_never_reaches_the_prompt_or_ends_the_app():
    text = "".join(f"w{i}{c}" for i, c in enumerate(CONTROLS)) + "end"
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        app.post_message(events.Paste(text))  # as the terminal driver delivers it
        await pilot.pause(0.1)
        app.prompt_input.post_message(events.Paste("\x11direct\x03"))  # straight to the prompt
        await pilot.pause(0.1)
        assert app.is_running and app.return_code is None
        assert app.prompt_input.text == escape_keys.printable(text) + "direct"
        assert not any(c in app.prompt_input.text for c in CONTROLS if c not in "\t\n")


async def test_control_keys_outside_a_paste_leave_the_prompt_clean():
    keys = [f"ctrl+{c}" for c in "abdefhklnprtuvwxz"] + ["tab", "escape", "ctrl+c"]
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.press(*"typed")
        for key in keys:
            await pilot.press(key)
            while len(app.screen_stack) > 1:  # a key that opened a screen (help, history, ...)
                await pilot.press("escape")
            app.prompt_input.focus()
        await pilot.pause(0.05)
        assert app.is_running and app.return_code is None
        assert not any(c in app.prompt_input.text for c in CONTROLS if c not in "\t\n")
