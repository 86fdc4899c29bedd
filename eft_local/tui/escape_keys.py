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
   or at a Ctrl+Q / Ctrl+C that arrives on its own (the user's key: a paste's characters
   arrive together with their neighbours); what was pasted so far arrives as one ``Paste``.
3. A paste's characters are text, never keys. Textual's parser turns some of them into keys
   (an ESC inside a paste reissues what follows as key presses, Ctrl+Q among them, which
   quit the app), so the paste's content bypasses it here; ``printable`` then drops the
   control characters that a prompt can't hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import events
from textual._time import get_time
from textual._xterm_parser import XTermParser

PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
PASTE_IDLE_SECONDS = 0.5
ALWAYS_KEYS = ("\x11", "\x03")  # Ctrl+Q, Ctrl+C: end a paste when they arrive on their own
# C0 and C1 control characters and DEL, but tab and line feed (a carriage return is a line end)
_CONTROLS = {c: None for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n"}


def printable(text: str) -> str:
    """Pasted text as a prompt can hold it: line ends as \\n, tabs kept, other control
    characters (NUL, ESC, Ctrl+Q, DEL, C1, ...) dropped."""
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROLS)


class EscapeSafeParser(XTermParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tail = ""  # the last few characters fed to Textual's parser, to see a paste start
        self._paste: list[str] | None = None  # the paste being received, else None
        self._last_input = 0.0

    def feed(self, data: str) -> Iterable:
        if not data:
            yield from super().feed(data)
            return
        self._last_input = get_time()
        users_key = data in ALWAYS_KEYS
        for char in data:  # one character at a time: which input produced each key is known
            if self._paste is None:
                yield from self._feed_char(char)
            elif users_key:
                yield from self._end_paste()
                yield from self._feed_char(char)
            else:
                yield from self._paste_char(char)

    def tick(self) -> Iterable:
        yield from super().tick()
        if self._paste is not None and get_time() - self._last_input >= PASTE_IDLE_SECONDS:
            yield from self._end_paste()

    def _feed_char(self, char: str) -> Iterable:
        tokens = list(super().feed(char))
        # A reissued sequence always starts with its ESC, shown as "^": the first token of
        # a batch, unless the batch is just the "^" the user typed.
        if tokens and _is_caret(tokens[0]) and (char != "^" or len(tokens) > 1):
            tokens[0] = events.Key("escape", "\x1b")
        self._tail = (self._tail + char)[-len(PASTE_START) :]
        if self._tail == PASTE_START:  # Textual's parser is in its paste mode now
            self._paste, self._tail = [], ""
        yield from tokens

    def _paste_char(self, char: str) -> Iterable:
        assert self._paste is not None
        self._paste.append(char)
        if char == PASTE_END[-1] and "".join(self._paste[-len(PASTE_END) :]) == PASTE_END:
            del self._paste[-len(PASTE_END) :]
            yield from self._end_paste()

    def _end_paste(self) -> Iterable:
        """Close the paste (Textual's parser leaves its paste mode; its empty Paste is dropped)
        and emit what was pasted."""
        text = "".join(self._paste or ())
        self._paste = None
        for char in PASTE_END:
            yield from (t for t in self._feed_char(char) if not isinstance(t, events.Paste))
        yield events.Paste(text)


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
