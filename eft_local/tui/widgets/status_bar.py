"""One line of live numbers: state, settings, tokens/s, acceptance, tokens, context used.

At its full width (about 110 columns) it shows the settings and each role's context; narrower,
it shortens by design (see ``Fitted``): the settings shrink to the mode, the numbers to their
abbreviations and the context to the fullest role's, so state, speed, acceptance, tokens and
context always show at 80 columns.
"""

from __future__ import annotations

from rich.text import Text

from eft_local.engine.events import GenStats
from eft_local.tui.widgets.fitted import Fitted

SHORT = {"base": "base", "chat": "chat", "reference": "ref"}


class StatusBar(Fitted):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = "loading"
        self.settings: tuple[str, ...] = ("",)  # the settings' description, most detailed first
        self.stats: GenStats | None = None
        self.context: dict[str, tuple[int, int]] = {}

    def set(
        self,
        *,
        state: str | None = None,
        settings: tuple[str, ...] | None = None,
        stats: GenStats | None = None,
        context: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        if state is not None:
            self.state = state
        if settings is not None:
            self.settings = settings
        if stats is not None:
            self.stats = stats
        if context is not None:
            self.context = context
        self.refresh()

    def forms(self) -> list[Text]:
        full, short, mode = (*self.settings, "", "")[:3]
        numbers, nums = self._numbers(short=False), self._numbers(short=True)
        context, ctx = (context_text(self.context), context_short(self.context)) if self.context else ("", "")
        line = self._line
        return [
            line(full, numbers, context),
            line(full, numbers, ctx),
            line(short, numbers, ctx),
            line(mode, numbers, ctx),
            line(mode, nums, ctx),
            line("", nums, ctx),
            line("", nums, ""),
            line("", "", ""),
        ]

    def _line(self, settings: str, numbers: str, context: str) -> Text:
        t = Text()
        t.append(f" {self.state} ", "bold reverse")
        if settings:
            t.append(f"  {settings}")
        if numbers:
            t.append(f" │ {numbers}", "bold")
        if context:
            t.append(f" │ {context}", "dim")
        return t

    def _numbers(self, *, short: bool) -> str:
        s = self.stats
        if s is None:
            return ""
        acc = f"{s.acceptance:.0%}" if s.acceptance is not None else "–"
        if short:
            return f"{s.tokens_per_second:,.0f} tok/s  acc {acc}  {s.n_tokens} tok"
        return f"{s.tokens_per_second:,.1f} tok/s │ accept {acc} │ {s.n_tokens} tok"


def context_text(context: dict[str, tuple[int, int]]) -> str:
    """``ctx base 144 chat 140 ref 140 /4096`` (one n_ctx when all roles share it)."""
    sizes = {c for _, c in context.values()}
    if len(sizes) == 1:
        return "ctx " + " ".join(f"{SHORT.get(r, r)} {n}" for r, (n, _) in context.items()) + f" /{sizes.pop()}"
    return "ctx " + " ".join(f"{SHORT.get(r, r)} {n}/{c}" for r, (n, c) in context.items())


def context_short(context: dict[str, tuple[int, int]]) -> str:
    """``ctx 144/4096``: the role whose context is fullest (it runs out first)."""
    used, size = max(context.values(), key=lambda nc: nc[0] / max(nc[1], 1))
    return f"ctx {used}/{size}"
