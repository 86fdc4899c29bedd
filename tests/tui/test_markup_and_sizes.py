"""Markup-looking text everywhere, tiny terminals, and a crash that exits non-zero."""

from __future__ import annotations

import os
import shutil

import pytest
from textual.widgets import Label, OptionList

from eft_local.errors import UserError
from eft_local.tui.app import EftChatApp
from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.history import HistoryStore
from eft_local.tui.screens.compare import CompareScreen
from eft_local.tui.screens.history import HistoryScreen
from eft_local.tui.widgets.chat_view import AssistantMessage
from eft_local.tui.widgets.load_panel import ErrorPanel, LoadPanel
from eft_local.tui.widgets.settings_panel import SettingsPanel
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, app_for, loaded, send

MARKUP = ["[/]", "[bold]unclosed", "[link=x]y[/link]", "a\\[b]", "[@click=app.quit]q[/]", "x\\", "[red]r[/blue]"]


EVIL = "  ".join(MARKUP)


def shown(widget) -> str:
    """What a widget shows, as plain text (rendering raises MarkupError on bad markup)."""
    return str(widget.render())


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_markup_in_messages_errors_settings_and_names(tui_family, tmp_path, monkeypatch):
    app = app_for(tui_family, profile_name="[/]p[b]", system_prompt=EVIL)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        for text in MARKUP:  # user text, and an answer after it
            await send(pilot, text)
        assert [t.content for t in app.conv.turns if t.role == "user"] == MARKUP
        assert len(app.query(AssistantMessage)) == len(MARKUP)
        # an error string with markup in it: the answer's footer and a notice
        monkeypatch.setattr(type(app.engine), "fit_prompt", lambda *a, **k: (_ for _ in ()).throw(UserError(EVIL)))
        await pilot.press(*"boom", "enter")
        await wait_for(pilot, lambda: not app.generating, what="the failed answer")
        await pilot.pause(0.1)
        assert EVIL in notices(app)
        note = app.query(AssistantMessage).last().query_one(".note", Label)
        assert EVIL in shown(note)
        monkeypatch.undo()
        # compare shows the typed prompt and per-column errors
        monkeypatch.setattr(type(app.engine), "fit_prompt", lambda *a, **k: (_ for _ in ()).throw(UserError("[/]x")))
        await pilot.press("ctrl+a", *"[/] [b]cmp", "ctrl+b")
        assert isinstance(app.screen, CompareScreen)
        await wait_for(pilot, lambda: not app.generating, what="compare")
        await pilot.pause(0.1)
        assert "[/] [b]cmp" in shown(app.screen.query_one("#compare-prompt"))
        assert all("[/]x" in str(c.border_subtitle) for c in app.screen.columns)
        await pilot.press("escape")
        monkeypatch.undo()
        # a settings field with markup: the error label quotes it as typed
        await pilot.press("ctrl+g", "[", "/", "]")
        assert "'[/]'" in shown(app.query_one("#settings-error"))
        await pilot.press("ctrl+a", "1", "escape")
        # export with a working directory whose name is markup
        evil_dir = tmp_path / "[red]out[@click=app.quit]x" / "]q[b"
        evil_dir.mkdir(parents=True)
        os.chdir(evil_dir)
        await pilot.press("f4")
        await pilot.pause(0.1)
        assert list(evil_dir.glob("eft-chat-*.md"))
        assert any(str(evil_dir) in n for n in notices(app))
    assert app.return_code in (None, 0)


async def test_markup_in_history_titles_and_info_opens_on_every_start(tui_family):
    store = HistoryStore()
    for text in MARKUP:
        store.save(Conversation(system_prompt=text, turns=[Turn("user", text), Turn("assistant", text, info=text)]))
    for _ in range(2):  # a bad title never breaks a later start
        app = app_for(tui_family)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+o")
            assert isinstance(app.screen, HistoryScreen)
            options = app.screen.query_one(OptionList)
            titles = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            assert all(any(t in title for title in titles) for t in MARKUP)
            await pilot.press("enter")
            await wait_for(pilot, lambda app=app: app.conv.turns, what="chat to open")
            await pilot.pause(0.1)
            who = app.query(AssistantMessage).last().query_one(".who", Label)
            assert app.conv.turns[-1].info in shown(who)
        assert app.return_code in (None, 0)


async def test_markup_in_model_file_names_and_load_errors(tui_family, tmp_path):
    paths = {}
    for role, name in zip(("base", "chat", "reference"), ("[b]base[i.gguf", "[link=x]chat.gguf", "ref\\[x].gguf")):
        paths[role] = tmp_path / name
        shutil.copy(getattr(tui_family, role), paths[role])
    app = EftChatApp(paths=paths, n_ctx=512, max_tokens=4, n_threads=1, seed=1)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(LoadPanel)
        files = [shown(label) for label in panel.query(".file")]
        assert all(any(p.name in f for f in files) for p in paths.values())
        await loaded(pilot)
        await send(pilot, "hi")
    assert app.return_code in (None, 0)
    missing = {r: tmp_path / "[" / "]missing[b].gguf" for r in ("base", "chat", "reference")}  # "...[/]missing[b]..."
    app = EftChatApp(paths=missing)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query(ErrorPanel), what="error panel")
        assert "[/]missing[b].gguf" in shown(app.query_one(ErrorPanel))
        await pilot.press(*"hi", "enter")  # the notice repeats the load error
        await pilot.pause(0.1)
    app = EftChatApp(paths=None, load_error=EVIL)
    async with app.run_test(size=SIZE) as pilot:
        assert EVIL in shown(app.query_one(ErrorPanel))
        await pilot.press(*"hi", "enter")
        await pilot.pause(0.1)
        assert EVIL in notices(app)


@pytest.mark.parametrize("size", [(20, 8), (30, 10), (40, 12), (12, 5), (72, 20)])
async def test_small_terminals_work(tui_family, size):
    app = app_for(tui_family, max_tokens=6)
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        await send(pilot, "hello there")
        assert app.conv.turns[-1].role == "assistant"
        await pilot.press("ctrl+g")  # EFT controls: beside the chat, or instead of it when narrow
        panel = app.query_one(SettingsPanel)
        assert panel.display and app.focused.id == "alpha"
        assert app.query_one("#chat-column").display == (size[0] >= 72)
        await pilot.press("escape")
        assert app.query_one("#chat-column").display and app.focused.id == "prompt"
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: not app.generating, what="compare")
        await pilot.press("escape")
        for key in ("f1", "ctrl+o", "ctrl+s"):
            await pilot.press(key)
            await pilot.pause(0.05)
            await pilot.press("escape")
        await pilot.resize_terminal(110, 36)  # growing back shows the controls beside the chat again
        await pilot.pause(0.05)
        assert panel.display and app.query_one("#chat-column").display
        await pilot.resize_terminal(*size)
        await pilot.pause(0.05)
        assert app.query_one("#chat-column").display
    assert app.return_code in (None, 0)


def test_a_crash_exits_non_zero(tui_family, monkeypatch):
    from eft_local.tui import run_chat

    real_run = EftChatApp.run
    monkeypatch.setattr(EftChatApp, "run", lambda self, **kw: real_run(self, headless=True, **kw))
    monkeypatch.setattr(EftChatApp, "on_mount", lambda self: 1 / 0)
    assert run_chat(paths=tui_family.paths(), n_ctx=512, n_threads=1) == 1
