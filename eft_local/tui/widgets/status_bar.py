"""One line of live numbers: state, tokens/s, acceptance, tokens, context used per role."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from eft_local.engine.events import GenStats

SHORT = {"base": "base", "chat": "chat", "reference": "ref"}


class StatusBar(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.state = "loading"
        self.settings = ""
        self.stats: GenStats | None = None
        self.context: dict[str, tuple[int, int]] = {}

    def set(
        self,
        *,
        state: str | None = None,
        settings: str | None = None,
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
        self.update(self.status_text())

    def status_text(self) -> Text:
        t = Text()
        t.append(f" {self.state} ", "bold reverse")
        t.append(f"  {self.settings}")
        s = self.stats
        if s is not None:
            t.append(f"  │ {s.tokens_per_second:,.1f} tok/s", "bold")
            acc = s.acceptance
            t.append(f" │ accept {acc:.0%}" if acc is not None else " │ accept –")
            t.append(f" │ {s.n_tokens} tok")
        if self.context:
            t.append(f" │ ctx {context_text(self.context)}", "dim")
        return t


def context_text(context: dict[str, tuple[int, int]]) -> str:
    """``base 144 chat 140 ref 140 /4096`` (one n_ctx when all roles share it)."""
    sizes = {c for _, c in context.values()}
    if len(sizes) == 1:
        return " ".join(f"{SHORT.get(r, r)} {n}" for r, (n, _) in context.items()) + f" /{sizes.pop()}"
    return " ".join(f"{SHORT.get(r, r)} {n}/{c}" for r, (n, c) in context.items())
