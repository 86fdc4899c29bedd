"""Ctrl+O: pick a saved chat (Enter opens, Delete removes after a y/n question)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from eft_local.tui.history import HistoryError, HistoryStore
from eft_local.tui.screens.confirm import ConfirmScreen


class HistoryScreen(ModalScreen[int | None]):
    """A history file that fails (corrupted while the app runs) closes the screen with a notice."""

    BINDINGS = [("escape", "cancel", "Close"), ("delete", "delete", "Delete chat")]

    def __init__(self, store: HistoryStore) -> None:
        super().__init__()
        self.store = store
        self.titles: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="history-box"):
            yield Label("[b]Saved chats[/]  [dim]Enter open · Delete remove · Esc close[/]")
            yield OptionList(id="history-list")

    def on_mount(self) -> None:
        self._fill()

    def _fill(self) -> None:
        try:
            chats = self.store.list()
        except HistoryError as e:
            self._fail(e)
            return
        options = self.query_one(OptionList)
        options.clear_options()
        self.titles = {c.chat_id: str(c.title) for c in chats}
        for c in chats:
            label = Content.assemble(str(c.title), (f"  {c.updated} · {c.n_turns} messages", "dim"))  # titles are user text
            options.add_option(Option(label, id=str(c.chat_id)))
        if chats:
            options.highlighted = 0
        else:
            options.add_option(Option("[dim]no saved chats yet[/]", disabled=True))

    def _fail(self, error: HistoryError) -> None:
        self.app.notify(str(error), severity="error", timeout=10)
        self.dismiss(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(int(event.option.id))

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        if not option.id:
            return
        chat_id = int(option.id)

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.delete(chat_id)
            except HistoryError as e:
                self._fail(e)
                return
            self._fill()

        title = self.titles.get(chat_id, "")
        question = Content.assemble("Delete the saved chat ", (title, "bold"), "? This can't be undone.")
        self.app.push_screen(ConfirmScreen(question), answered)

    def action_cancel(self) -> None:
        self.dismiss(None)
