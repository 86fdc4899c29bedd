"""Delta view: colour each generated token by how much the fine-tuning delta moved it.

delta = log p_EFT(token) − log p_base(token). Blue: EFT (the small chat model's
behaviour) raised the token above what the base model alone would give — behaviour.
Red: the base model liked the token more than EFT did. No colour: both agree — the
token came from the base model's knowledge.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.style import Style
from rich.text import Text

from eft_local.tui.conversation import Span

THRESHOLDS = (0.25, 1.0, 2.0, 4.0)  # |delta| in nats at which each colour level starts
RAISED = ("#1b3355", "#1f4f8f", "#2563c9", "#3b82f6")
LOWERED = ("#4a1f1f", "#7a2626", "#a83232", "#dc4444")
_STYLES = {
    (sign, i): Style(bgcolor=pal[i], color="#ffffff" if i >= 2 else None)
    for sign, pal in ((1, RAISED), (-1, LOWERED))
    for i in range(len(pal))
}


def style_for(delta: float | None) -> Style | None:
    if delta is None:
        return None
    level = sum(abs(delta) >= t for t in THRESHOLDS) - 1
    if level < 0:
        return None
    return _STYLES[(1 if delta > 0 else -1, level)]


def append_spans(text: Text, spans: Iterable[Span]) -> Text:
    for piece, delta in spans:
        text.append(piece, style_for(delta))
    return text


def render(spans: Iterable[Span]) -> Text:
    return append_spans(Text(), spans)


def legend_forms() -> list[Text]:
    """The delta view's legend, most detailed first (the widget shows the first that fits)."""

    def legend(title: str, raised: str, preferred: str, rest: str) -> Text:
        t = Text(title)
        t.append(f" {raised} ", _STYLES[(1, 2)])
        t.append(" ")
        t.append(f" {preferred} ", _STYLES[(-1, 2)])
        t.append(rest, "dim")
        return t

    return [
        legend(
            "delta view  ",
            "fine-tuning raised",
            "base preferred",
            "  uncoloured: EFT ≈ base (knowledge)  ·  log p_EFT − log p_base",
        ),
        legend("delta view  ", "fine-tuning raised", "base preferred", "  uncoloured: EFT ≈ base (knowledge)"),
        legend("delta  ", "tuning raised", "base preferred", "  plain: EFT ≈ base"),
        legend("Δ ", "tuned ↑", "base ↑", " plain ≈ base"),
        legend("", "tuned", "base", ""),
    ]


def summary(spans: Iterable[Span]) -> str:
    """Share of tokens the fine-tuning delta noticeably moved (|delta| ≥ 1 nat)."""
    deltas = [d for _, d in spans if d is not None]
    if not deltas:
        return ""
    moved = sum(abs(d) >= 1.0 for d in deltas) / len(deltas)
    return f"{moved:.0%} of tokens moved ≥1 nat by fine-tuning"
