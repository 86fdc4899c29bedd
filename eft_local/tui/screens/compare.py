"""Ctrl+B: one prompt answered by base alone, chat alone and EFT, side by side."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Label

from eft_local.mix.params import SamplingParams
from eft_local.tui.conversation import Turn
from eft_local.tui.settings import ChatSettings
from eft_local.tui.stream import GenerationFinished, StatsUpdated
from eft_local.tui.widgets.chat_view import AssistantMessage


def compare_variants(settings: ChatSettings) -> list[tuple[str, SamplingParams]]:
    """Compare columns: base alone, chat alone, each further delta alone (on the base), EFT."""
    s = settings.sampling
    out = [("base alone  α=0 β=1", settings.corner(0.0, 1.0)), ("chat alone  α=1 β=0", settings.corner(1.0, 0.0))]
    for name in settings.deltas:
        w = s.weights.get(name, 1.0)
        out.append((f"{name} alone  β={s.beta:g} {name}={w:g}", settings.corner(0.0, s.beta, only=name)))
    out.append((f"EFT  {settings.mix()}", s))
    return out


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

    def __init__(self, prompt: str, settings: ChatSettings, delta_view: bool) -> None:
        super().__init__()
        self.prompt = prompt
        self.variants = compare_variants(settings)
        self.columns = [CompareColumn(title, Turn("assistant", ""), delta_view) for title, _ in self.variants]

    def compose(self) -> ComposeResult:
        text = " ".join(self.prompt.split())
        yield Label(Content.assemble(("Compare", "bold"), "  " + text[:200]), id="compare-prompt")
        with Horizontal(id="compare-columns"):
            yield from self.columns
        yield Footer()

    @property
    def answers(self) -> list[AssistantMessage]:
        return [c.answer for c in self.columns]

    def runs(self) -> list[tuple[SamplingParams, AssistantMessage]]:
        """Each column's sampling and the widget its answer streams into."""
        return [(sampling, column.answer) for (_, sampling), column in zip(self.variants, self.columns)]

    def action_stop_or_close(self) -> None:
        if getattr(self.app, "generating", False):
            self.app.action_stop()
        else:
            self.dismiss()

    def action_close(self) -> None:
        self.app.action_stop()
        self.dismiss()
