"""The history store on a damaged file, and deleting a saved chat asks first."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Label

from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.history import HistoryError, HistoryStore
from eft_local.tui.screens.confirm import ConfirmScreen
from eft_local.tui.screens.help import HelpScreen
from eft_local.tui.screens.history import HistoryScreen
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, no_models_app

# -- item 20: history.sqlite corrupted while the app runs -------------------------------------------


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
