"""Export (F4, Ctrl+S): system prompts where they were set, fallbacks when the working directory can't take the file."""

from __future__ import annotations

import os

from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.history import HistoryStore
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, app_for, loaded, no_models_app, send


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


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


# -- export (F4) when the working directory can't take the file -----------------------------------
async def test_export_falls_back_when_the_working_directory_is_gone(tui_family, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    app = app_for(tui_family, max_tokens=4)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await send(pilot, "hi")
        gone.rmdir()
        await pilot.press("f4")
        await pilot.pause(0.1)
        exported = list(home.glob("eft-chat-*.md"))
        assert len(exported) == 1 and "## User" in exported[0].read_text()
        last = notices(app)[-1]
        assert "working directory is gone" in last and str(exported[0]) in last
        await pilot.press("f4")  # a second export in the same second gets its own file
        await pilot.pause(0.1)
        assert len(list(home.glob("eft-chat-*.md"))) == 2
    assert app.return_code in (None, 0)
    os.chdir(tmp_path)


async def test_export_falls_back_when_nothing_is_writable(tui_family, tmp_path, monkeypatch):
    from eft_local.tui import export as export_module

    def refuse(folder, name, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_module, "write_new", refuse)
    app = app_for(tui_family, max_tokens=4)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await send(pilot, "hi")
        await pilot.press("f4")
        await pilot.pause(0.1)
        last = notices(app)[-1]
        assert "could not export" in last and "Permission denied" in last and str(tmp_path) in last
    assert app.return_code in (None, 0)
