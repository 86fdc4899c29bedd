"""Terminal input fixes on top of Textual's xterm parser (installed by ``run_chat``).

1. Esc pressed fast after an Alt-combo must not type ``^`` into the prompt. Textual's input
   parser waits briefly after ESC for the rest of an escape sequence. When another ESC
   arrives before an unrecognised sequence is complete (Alt+[ then Esc, Esc O Esc, ...) it
   reissues the pending characters as keys and shows the first ESC as a literal ``^``
   (``circumflex_accent``), which a text area then types. Here such a caret, one that the
   terminal never sent, is delivered as what it was: the Escape key.
2. A bracketed paste that never ends (a terminal or multiplexer that lost the closing
   ``ESC [201~``, ``cat`` of a binary file) would swallow every later key, Ctrl+Q included.
   A paste ends here at its closing sequence, after ``PASTE_IDLE_SECONDS`` without input,
   or at Ctrl+Q / Ctrl+C (terminals strip control characters from pastes, so these are
   the user's keys); what was pasted so far arrives as one ``Paste`` event.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import events
from textual._time import get_time
from textual._xterm_parser import XTermParser

PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
PASTE_IDLE_SECONDS = 0.5
ALWAYS_KEYS = ("\x11", "\x03")  # Ctrl+Q, Ctrl+C: never part of a paste


class EscapeSafeParser(XTermParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tail = ""  # the last few characters fed, to see paste brackets
        self._in_paste = False
        self._last_input = 0.0

    def feed(self, data: str) -> Iterable:
        if not data:
            yield from super().feed(data)
            return
        self._last_input = get_time()
        for char in data:  # one character at a time: which input produced each key is known
            if self._in_paste and char in ALWAYS_KEYS:
                yield from self._end_paste()
            yield from self._feed_char(char)

    def tick(self) -> Iterable:
        yield from super().tick()
        if self._in_paste and get_time() - self._last_input >= PASTE_IDLE_SECONDS:
            yield from self._end_paste()

    def _feed_char(self, char: str) -> Iterable:
        tokens = list(super().feed(char))
        # A reissued sequence always starts with its ESC, shown as "^": the first token of
        # a batch, unless the batch is just the "^" the user typed.
        if tokens and _is_caret(tokens[0]) and (char != "^" or len(tokens) > 1):
            tokens[0] = events.Key("escape", "\x1b")
        self._tail = (self._tail + char)[-len(PASTE_START) :]
        if self._tail == PASTE_START:
            self._in_paste = True
        elif self._tail == PASTE_END:
            self._in_paste = False
        yield from tokens

    def _end_paste(self) -> Iterable:
        """Close the paste as the terminal should have: the parser emits what it collected."""
        for char in PASTE_END:
            yield from self._feed_char(char)


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
