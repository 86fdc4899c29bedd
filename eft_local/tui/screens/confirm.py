"""A yes/no question before something that can't be undone (deleting a saved chat)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True on ``y``, False on ``n`` or Esc (anything else does nothing)."""

    BINDINGS = [("y", "answer(True)", "Yes"), ("n,escape", "answer(False)", "No")]

    def __init__(self, question: str | Content) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(Content(self.question) if isinstance(self.question, str) else self.question)
            yield Label(Content.from_markup("[b]y[/] yes · [b]n[/] / [b]Esc[/] no"), classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
