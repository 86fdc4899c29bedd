"""Esc pressed fast after an Alt-combo must not type ``^`` into the prompt.

Textual's input parser waits briefly after ESC for the rest of an escape sequence. When
another ESC arrives before an unrecognised sequence is complete (Alt+[ then Esc, Esc O
Esc, ...) it reissues the pending characters as keys and shows the first ESC as a literal
``^`` (``circumflex_accent``), which a text area then types. Here such a caret, one that
the terminal never sent, is delivered as what it was: the Escape key.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import events
from textual._xterm_parser import XTermParser


class EscapeSafeParser(XTermParser):
    def feed(self, data: str) -> Iterable:
        if not data:
            yield from super().feed(data)
            return
        for char in data:  # one character at a time: which input produced each key is known
            tokens = list(super().feed(char))
            # A reissued sequence always starts with its ESC, shown as "^": the first token of
            # a batch, unless the batch is just the "^" the user typed.
            if tokens and _is_caret(tokens[0]) and (char != "^" or len(tokens) > 1):
                tokens[0] = events.Key("escape", "\x1b")
            yield from tokens


def _is_caret(token: object) -> bool:
    return isinstance(token, events.Key) and token.key == "circumflex_accent" and token.character == "^"


def install() -> None:
    """Use EscapeSafeParser in Textual's terminal drivers (best effort: private API)."""
    try:
        from textual.drivers import linux_driver, linux_inline_driver
    except ImportError:  # pragma: no cover - Windows
        return
    for module in (linux_driver, linux_inline_driver):
        if getattr(module, "XTermParser", None) is XTermParser:
            module.XTermParser = EscapeSafeParser
