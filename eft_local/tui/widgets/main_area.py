"""The chat column and the EFT controls side by side.

Below ``NARROW`` columns the chat gets the whole width and the controls show on demand,
full width, in place of the chat. The area remembers whether the user wants the controls
when there is room for both.
"""

from __future__ import annotations

from textual.containers import Horizontal

NARROW = 72  # columns


class MainArea(Horizontal):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.narrow = False
        self.controls_wanted = True

    @property
    def controls_shown(self) -> bool:
        return bool(self.query_one("#settings").display)

    def fit(self, width: int) -> None:
        narrow = width < NARROW
        if narrow != self.narrow:
            self.narrow = narrow
            self.set_class(narrow, "-narrow")
            self.show_controls(not narrow and self.controls_wanted)

    def show_controls(self, on: bool) -> None:
        self.query_one("#settings").display = on
        self.query_one("#chat-column").display = not (on and self.narrow)

    def want_controls(self, on: bool) -> None:
        """The user's choice (Ctrl+G): remembered for when the terminal grows again."""
        self.controls_wanted = on
        self.show_controls(on)

    def uncover_chat(self) -> bool:
        """Narrow and the controls cover the chat: back to the chat; False when nothing to do."""
        if self.narrow and self.controls_shown:
            self.show_controls(False)
            return True
        return False
