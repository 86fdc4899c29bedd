"""Ctrl+O: pick a saved chat (Enter opens, Delete removes)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from eft_local.tui.history import HistoryStore


class HistoryScreen(ModalScreen[int | None]):
    BINDINGS = [("escape", "cancel", "Close"), ("delete", "delete", "Delete chat")]

    def __init__(self, store: HistoryStore) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        with Vertical(id="history-box"):
            yield Label("[b]Saved chats[/]  [dim]Enter open · Delete remove · Esc close[/]")
            yield OptionList(id="history-list")

    def on_mount(self) -> None:
        self._fill()

    def _fill(self) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        chats = self.store.list()
        for c in chats:
            label = Content.assemble(str(c.title), (f"  {c.updated} · {c.n_turns} messages", "dim"))  # titles are user text
            options.add_option(Option(label, id=str(c.chat_id)))
        if chats:
            options.highlighted = 0
        else:
            options.add_option(Option("[dim]no saved chats yet[/]", disabled=True))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(int(event.option.id))

    def action_delete(self) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return
        option = options.get_option_at_index(options.highlighted)
        if option.id:
            self.store.delete(int(option.id))
            self._fill()

    def action_cancel(self) -> None:
        self.dismiss(None)
