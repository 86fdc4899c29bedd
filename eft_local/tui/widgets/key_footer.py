"""The footer, shortened by design: every shown key keeps its place and the labels shorten as a
whole (full, then ``keys.SHORT_LABELS``, then the keys alone) instead of the last keys being cut
off. F1 lists every key with its whole text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer

from eft_local.tui.keys import SHORT_LABELS

Key = tuple[str, str, str]  # action, key as shown, full label


def row_width(keys: Sequence[tuple[str, str]]) -> int:
    """Cells of a compact footer row of (key, label) pairs: "key label", one space between keys."""
    return sum(cell_len(key) + (1 + cell_len(label) if label else 0) for key, label in keys) + max(0, len(keys) - 1)


def labels_that_fit(keys: Sequence[Key], width: int) -> dict[str, str]:
    """action -> label: the most detailed form whose row fits ``width`` (else the keys alone)."""
    forms = [
        {action: full for action, _, full in keys},
        {action: SHORT_LABELS.get(action, full) for action, _, full in keys},
        {action: "" for action, _, _ in keys},
    ]
    return next((f for f in forms if row_width([(key, f[a]) for a, key, _ in keys]) <= width), forms[-1])


class KeyFooter(Footer):
    """Textual's footer whose labels fit its width (measured as a compact row: the app's footer is
    compact below 100 columns, and at 100 or more the full labels always fit)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: list[Key] = []
        self._labels: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        items = list(super().compose())
        shown = [w for w in items if hasattr(w, "key_display") and hasattr(w, "action") and w.description]
        self._keys = [(w.action, w.key_display, w.description) for w in shown]
        self._labels = labels_that_fit(self._keys, self.size.width)
        for widget in shown:
            widget.description = self._labels[widget.action]
        yield from items

    def on_resize(self, event: events.Resize) -> None:
        if self._keys and labels_that_fit(self._keys, event.size.width) != self._labels:
            self.call_after_refresh(self.recompose)
