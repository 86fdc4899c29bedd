"""Multi-line prompt: Enter sends, Shift+Enter or Ctrl+J inserts a newline, Up/Down on the
first/last line walk through the messages sent in this session (like a shell)."""

from __future__ import annotations

from rich.cells import cell_len
from textual import events
from textual.message import Message
from textual.strip import Strip
from textual.widgets import TextArea

from eft_local.tui.escape_keys import printable

NEWLINE_KEYS = ("shift+enter", "ctrl+j", "newline")
PLACEHOLDERS = (  # the first that fits the prompt's width shows
    "Message  (Enter send · Shift+Enter/Ctrl+J newline · ↑ earlier messages · F1 help)",
    "Message  (Enter send · Ctrl+J newline · ↑ earlier · F1 help)",
    "Message  (Enter send · F1 help)",
    "Message",
)
PLACEHOLDER = PLACEHOLDERS[0]


class PromptInput(TextArea):
    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.placeholder = PLACEHOLDER
        self.sent: list[str] = []
        self._recall: int | None = None  # index into sent while browsing, else None
        self._draft = ""  # what was typed before browsing started

    def on_resize(self, event: events.Resize) -> None:
        width = self.content_size.width - 1  # the cursor's cell
        self.placeholder = next((p for p in PLACEHOLDERS if cell_len(p) <= width), "")

    def render_line(self, y: int) -> Strip:
        # TextArea wraps its placeholder to the content width: at width 0 (a tiny terminal,
        # mid-layout) that raises "range() arg 3 must not be zero".
        if not self.text and self.placeholder and self.content_size.width < 1:
            return Strip.blank(self.size.width)
        return super().render_line(y)

    def _on_paste(self, event: events.Paste) -> None:
        """Runs before TextArea's own handler (Textual calls each class's along the MRO)."""
        event.text = printable(event.text)  # also when posted here directly, not through the app
        event.stop()  # handled here: bubbling up, the app would forward it here a second time

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                if not self.sent or self.sent[-1] != self.text:
                    self.sent.append(self.text)
                self._recall = None
                self.post_message(self.Submitted(self.text))
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self._browse(-1):
            event.stop()
            event.prevent_default()
            return
        if event.key == "down" and self.cursor_location[0] == self.document.line_count - 1 and self._browse(+1):
            event.stop()
            event.prevent_default()
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def _browse(self, step: int) -> bool:
        """Show the previous/next sent message; False when there is nowhere to go."""
        if self._recall is None:
            if step > 0 or not self.sent:
                return False
            self._draft, self._recall = self.text, len(self.sent)
        target = self._recall + step
        if target < 0:
            return True  # already at the oldest: swallow the key
        if target >= len(self.sent):
            self._recall = None
            self._show(self._draft)
            return True
        self._recall = target
        self._show(self.sent[target])
        return True

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)
