"""The chat app, issue 15: signals restore the terminal, a broken history file, a paste that
never ends, and what a new user tripped over (line breaks, export order, delete confirmation,
the help text, compare's finish reasons)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Label

from eft_local.tui import escape_keys
from eft_local.tui.app import EftChatApp
from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.escape_keys import EscapeSafeParser
from eft_local.tui.history import HistoryError, HistoryStore
from eft_local.tui.screens.confirm import ConfirmScreen
from eft_local.tui.screens.help import HelpScreen
from eft_local.tui.screens.history import HistoryScreen


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


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


# -- item 20: history.sqlite corrupted while the app runs -------------------------------------------
@pytest.fixture(autouse=True)
def xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


SIZE = (110, 36)


def no_models_app(**kwargs) -> EftChatApp:
    """The app without models (history, help and export work without them): starts fast."""
    return EftChatApp(paths=None, load_error="no models in this test", **kwargs)


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def saved_chats(*titles: str) -> HistoryStore:
    store = HistoryStore()
    for title in titles:
        store.save(Conversation(turns=[Turn("user", title), Turn("assistant", f"answer to {title}")]))
    return store


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database, it was overwritten while the app ran\n" * 200)


async def test_ctrl_o_on_a_history_corrupted_while_running_is_a_notice():
    store = saved_chats("first")
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.pause(0.05)
        corrupt(store.path)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: not isinstance(app.screen, HistoryScreen) and notices(app), what="a notice")
        assert "history" in notices(app)[-1] and str(store.path) in notices(app)[-1]
        await pilot.press("f1")  # the app goes on
        await pilot.pause(0.05)
        assert isinstance(app.screen, HelpScreen)
    assert app.return_code in (None, 0)


async def test_opening_or_deleting_a_chat_after_corruption_is_a_notice():
    store = saved_chats("first", "second")
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        corrupt(store.path)
        await pilot.press("enter")  # open: the load fails
        await wait_for(pilot, lambda: notices(app), what="a notice")
        assert "history" in notices(app)[-1] and not app.conv.turns
        store.path.unlink()
        store = saved_chats("third")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        corrupt(store.path)
        await pilot.press("delete", "y")  # delete: confirmed, then the file fails
        await wait_for(pilot, lambda: len(notices(app)) == 2, what="a second notice")
        assert not isinstance(app.screen, (HistoryScreen, ConfirmScreen))
    assert app.return_code in (None, 0)


def remove_folder(path: Path) -> None:
    import shutil

    shutil.rmtree(path.parent)


@pytest.mark.parametrize("damage", [corrupt, remove_folder])
def test_every_store_call_on_a_damaged_file_raises_one_history_error(damage):
    store = saved_chats("first")
    damage(store.path)
    for call in (store.list, lambda: store.load(1), lambda: store.delete(1), lambda: store.save(Conversation())):
        with pytest.raises(HistoryError, match="unusable"):
            call()


# -- deleting a saved chat asks first -----------------------------------------------------------------
async def test_deleting_a_chat_needs_a_confirmation():
    store = saved_chats("keep me", "delete me")
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="the history screen")
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "delete me" in str(app.screen.query_one(Label).render())  # the newest is highlighted
        await pilot.press("n")
        await pilot.pause(0.05)
        assert isinstance(app.screen, HistoryScreen) and len(store.list()) == 2
        await pilot.press("delete", "escape")
        await pilot.pause(0.05)
        assert isinstance(app.screen, HistoryScreen) and len(store.list()) == 2
        await pilot.press("delete", "y")
        await pilot.pause(0.05)
        assert isinstance(app.screen, HistoryScreen)
        assert [c.title for c in store.list()] == ["keep me"]


# -- item 19: signals that end the app restore the terminal -------------------------------------------
CHILD = "import sys; from eft_local.tui import run_chat; sys.exit(run_chat(paths=None, load_error='no models here'))"
RESTORED = {"alternate screen left": "\x1b[?1049l", "cursor shown": "\x1b[?25h", "mouse reporting off": "\x1b[?1000l"}


class PtyApp:
    """The real app (its own terminal driver and parser) in a pseudo-terminal."""

    def __init__(self, tmp_path: Path) -> None:
        import fcntl
        import os
        import struct
        import subprocess
        import sys
        import termios

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 110, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).parents[1])}
        env.update(XDG_DATA_HOME=str(tmp_path / "data"), XDG_CONFIG_HOME=str(tmp_path / "config"))
        env.pop("TEXTUAL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.master, self.output = master, b""

    def read_until(self, marker: bytes, timeout: float = 30.0) -> bool:
        import os
        import select

        end = time.monotonic() + timeout
        while marker not in self.output and time.monotonic() < end:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    return marker in self.output
                if not chunk:
                    break
                self.output += chunk
        return marker in self.output

    def write(self, data: str) -> None:
        import os

        os.write(self.master, data.encode())

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for the exit, reading all the while (a full terminal buffer blocks the writer)."""
        import os

        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read_until(b"\x00never", timeout=0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the app did not exit within {timeout} s")
        self.read_until(b"\x00never", timeout=0.3)  # what is left
        os.close(self.master)
        return self.proc.returncode

    def after_start(self) -> str:
        text = self.output.decode("utf-8", "replace")
        return text[text.rfind("\x1b[?1049h") :]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT"])
def test_a_signal_that_ends_the_app_restores_the_terminal(tmp_path, sig):
    import os
    import signal

    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)  # mounted: the handlers are in place
    os.kill(app.proc.pid, getattr(signal, sig))
    code = app.finish()
    assert code == 1, f"ended by the signal itself ({code}), not by the app"  # 1: the models had not loaded
    tail = app.after_start()
    missing = [what for what, seq in RESTORED.items() if seq not in tail]
    assert not missing, f"after {sig} the terminal was not restored: {missing}"
    assert "Traceback" not in tail


def test_ctrl_q_ends_the_real_app_inside_an_unterminated_paste(tmp_path):
    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)
    app.write("\x1b[200~a paste whose end got lost")
    time.sleep(0.1)
    app.write("\x11")  # Ctrl+Q
    assert app.finish(timeout=10) == 1
    assert all(seq in app.after_start() for seq in RESTORED.values())


# -- export records the system prompt where it was set ---------------------------------------------------
def exchange(n: int) -> list[Turn]:
    return [t for i in range(n) for t in (Turn("user", f"question {i + 1}"), Turn("assistant", f"answer {i + 1}"))]


def headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("## ")]


def test_export_puts_each_system_prompt_where_it_was_set():
    conv = Conversation(turns=exchange(2))
    conv.set_system_prompt("first draft")
    conv.set_system_prompt("be terse")  # two edits before the same turn: the last counts
    conv.turns += exchange(1)
    conv.set_system_prompt("")
    md = conv.to_markdown()
    assert headings(md) == ["## User", "## Assistant"] * 2 + ["## System"] + ["## User", "## Assistant"] + ["## System"]
    assert "be terse" in md and "first draft" not in md and "system prompt cleared" in md
    top = Conversation(system_prompt="be kind", turns=exchange(1)).to_markdown()
    assert headings(top) == ["## System", "## User", "## Assistant"]  # set at the start: at the top


def test_the_system_prompt_log_survives_the_history_and_an_old_schema(tmp_path):
    import sqlite3

    conv = Conversation(system_prompt="at the top", turns=exchange(2))
    conv.set_system_prompt("later")
    store = HistoryStore()
    back = store.load(store.save(conv))
    assert back.system_log == [(0, "at the top"), (4, "later")] and back.system_prompt == "later"
    old = tmp_path / "v1.sqlite"  # a file written by schema 1 (no system_log column)
    with sqlite3.connect(old) as db:
        db.executescript(
            "CREATE TABLE chats (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created TEXT NOT NULL,"
            " updated TEXT NOT NULL DEFAULT (datetime('now')), system_prompt TEXT NOT NULL DEFAULT '');"
            "INSERT INTO chats (title, created, system_prompt) VALUES ('old', '2026-01-01', 'old prompt');"
            "PRAGMA user_version = 1;"
        )
    migrated = HistoryStore(old).load(1)
    assert migrated.system_log == [(0, "old prompt")]


async def test_ctrl_s_after_four_turns_exports_the_system_prompt_there(tmp_path):
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        app.conv = Conversation(turns=exchange(2))
        await app.chat_view.show(app.conv)
        await pilot.press("ctrl+s")
        await pilot.press(*"be terse", "ctrl+s")
        await pilot.pause(0.05)
        await pilot.press("f4")
        await wait_for(pilot, lambda: list(tmp_path.glob("eft-chat-*.md")), what="the export")
        (exported,) = tmp_path.glob("eft-chat-*.md")
        assert headings(exported.read_text())[-1] == "## System"
        assert exported.read_text().rstrip().endswith("be terse")


# -- the chat pane keeps the model's line breaks ----------------------------------------------------------
POEM = "Roses are red,\nviolets are blue,\nsugar is sweet.\n\nA new verse\nstarts here."


def paragraphs(widget) -> list[str]:
    from textual.widgets._markdown import MarkdownParagraph

    return [str(p.render()) for p in widget.query(MarkdownParagraph)]


async def test_chat_pane_keeps_single_line_breaks():
    from eft_local.engine.events import FinishedEvent, GenStats
    from eft_local.tui.stream import GenerationFinished, TokensArrived
    from eft_local.tui.widgets.chat_view import AssistantMessage, UserMessage

    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        app.conv = Conversation(turns=[Turn("user", "line one\nline two"), Turn("assistant", POEM)])
        await app.chat_view.show(app.conv)
        await pilot.pause(0.05)
        expected = ["Roses are red,\nviolets are blue,\nsugar is sweet.", "A new verse\nstarts here."]
        assert paragraphs(app.query_one(AssistantMessage)) == expected
        assert paragraphs(app.query_one(UserMessage)) == ["line one\nline two"]
        streamed = await app.chat_view.add_assistant(Turn("assistant", ""))  # the streaming path
        for piece in (POEM[:20], POEM[20:]):
            streamed.post_message(TokensArrived(streamed, piece, [(piece, None)]))
            await pilot.pause(0.05)
        streamed.post_message(GenerationFinished(streamed, FinishedEvent("stop", POEM, [], GenStats()), {}))
        await wait_for(pilot, lambda: paragraphs(streamed) == expected, timeout=5, what="the streamed poem")


# -- F1 help: the formula is a line of its own --------------------------------------------------------------
async def test_help_formula_does_not_run_into_the_next_sentence():
    from textual.widgets._markdown import MarkdownParagraph

    async with no_models_app().run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), what="help")
        await pilot.pause(0.1)
        texts = [str(p.render()) for p in pilot.app.screen.query(MarkdownParagraph)]
        formula = [t for t in texts if t.startswith("z = ")]
        assert formula and formula[0].endswith("(base − reference)"), texts


# -- Esc after a compare column hit max tokens: "length", not "stopped" --------------------------------------
@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from eft_local.engine.decoder import EftEngine
    from eft_local.llama.synthetic import write_family

    family = write_family(tmp_path_factory.mktemp("robust-family"))
    engine = EftEngine.load(family.paths(), n_ctx=256, n_threads=1)
    yield engine
    engine.close()


@pytest.mark.parametrize("draft_tokens", [0, None, 3])
def test_stop_pressed_while_the_last_token_decodes_still_says_length(tiny_engine, draft_tokens):
    """Esc lands while the model computes the answer's last token: the answer is complete."""
    import numpy as np

    from eft_local.engine.config import GenerationConfig
    from eft_local.engine.events import FinishedEvent, TokenEvent
    from eft_local.engine.session import Session

    max_tokens = 6
    prompt, _ = Session(tiny_engine).fit([{"role": "user", "content": "hello there"}], max_tokens)
    config = GenerationConfig(max_tokens=max_tokens, draft_tokens=draft_tokens)
    seen, stop = 0, [False]
    for event in tiny_engine.generate(prompt, config, np.random.default_rng(0), cancel=lambda: stop[0]):
        if isinstance(event, TokenEvent):
            seen += 1
            stop[0] = seen >= max_tokens - 1  # Esc before the last token is out
        elif isinstance(event, FinishedEvent):
            result = event
    assert result.stats.n_tokens == max_tokens  # it did reach the limit (no end-of-generation token)
    assert result.reason == "length"


async def test_signal_handlers_are_put_back_when_the_app_ends():
    import signal

    def mine(signum, frame):  # an embedding program's own handler
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        async with no_models_app().run_test(size=SIZE) as pilot:
            await pilot.pause(0.05)
            assert signal.getsignal(signal.SIGTERM) is not mine  # the app's, while it runs
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
