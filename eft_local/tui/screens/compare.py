"""Ctrl+B: one prompt answered by base alone, chat alone and EFT, side by side."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Label

from eft_local.tui.conversation import Turn
from eft_local.tui.stream import GenerationFinished, StatsUpdated
from eft_local.tui.widgets.chat_view import AssistantMessage


class CompareColumn(VerticalScroll):
    def __init__(self, title: str, turn: Turn, delta_view: bool) -> None:
        super().__init__(classes="compare-column")
        self.border_title = Content(title)
        self.border_subtitle = "waiting"
        self.answer = AssistantMessage(turn, delta_view=delta_view, streaming=True)

    def compose(self) -> ComposeResult:
        yield self.answer

    def on_stats_updated(self, message: StatsUpdated) -> None:
        message.stop()
        self.border_subtitle = Content(f"{message.stats.n_tokens} tok · {message.stats.tokens_per_second:,.1f} tok/s")

    def on_generation_finished(self, message: GenerationFinished) -> None:
        s, r = message.result.stats, message.result
        done = {"stop": "done", "length": "max tokens", "cancelled": "stopped", "error": f"error: {r.error}"}[r.reason]
        self.border_subtitle = Content(f"{done} · {s.n_tokens} tok · {s.tokens_per_second:,.1f} tok/s")  # errors are plain text


class CompareScreen(Screen[None]):
    BINDINGS = [("escape", "stop_or_close", "Stop / close"), ("q", "close", "Close")]

    def __init__(self, prompt: str, columns: list[tuple[str, Turn]], delta_view: bool) -> None:
        super().__init__()
        self.prompt = prompt
        self.columns = [CompareColumn(title, turn, delta_view) for title, turn in columns]

    def compose(self) -> ComposeResult:
        text = " ".join(self.prompt.split())
        yield Label(Content.assemble(("Compare", "bold"), "  " + text[:200]), id="compare-prompt")
        with Horizontal(id="compare-columns"):
            yield from self.columns
        yield Footer()

    @property
    def answers(self) -> list[AssistantMessage]:
        return [c.answer for c in self.columns]

    def action_stop_or_close(self) -> None:
        if getattr(self.app, "generating", False):
            self.app.action_stop()
        else:
            self.dismiss()

    def action_close(self) -> None:
        self.app.action_stop()
        self.dismiss()
