"""One line that never clips: it shows the most detailed of its forms that fits its width.

Narrow terminals get a line shortened by design (abbreviations, the less important parts
left out), not one cut off mid-word. The forms are built when the line is drawn, so a
resize or new numbers need only a refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widget import Widget


def first_fitting(forms: Sequence[Text], width: int) -> Text:
    """The first form whose cells fit ``width``; else the last (shortest) one."""
    return next((form for form in forms if form.cell_len <= width), forms[-1])


class Fitted(Widget):
    DEFAULT_CSS = "Fitted { height: 1; }"

    def __init__(self, forms: Callable[[], Sequence[Text]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._forms = forms

    def forms(self) -> Sequence[Text]:
        """Most detailed first."""
        return self._forms() if self._forms else [Text()]

    def render(self) -> Text:
        return first_fitting(self.forms(), self.content_size.width)

    @property
    def shown(self) -> str:
        """The plain text this line shows at its width (for tests and screen readers)."""
        return self.render().plain
