"""F1: every key, and what the EFT controls mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from eft_local.tui.keys import EDITING, KEYS

ABOUT = """
## EFT in one line
`z = reference + α·(chat − reference) + β·(base − reference)`

**α** scales the *behaviour* learnt by fine-tuning (the small chat model), **β** the *knowledge*
of the large base model. α=1, β=1 is EFT up-scaling; α=1, β=0 the small chat model alone;
α=0, β=1 the base model alone. Changes apply to the next answer — no reload.

**Delta view** colours each generated token by log p_EFT − log p_base: blue where fine-tuning
raised it (behaviour), red where the base model preferred it more, uncoloured where they agree.
**Speculative** decoding lets the chat model draft a block that base and reference verify in one
batch; the output distribution is exactly EFT's.
"""


def help_markdown() -> str:
    rows = [f"| `{k}` | {text} |" for k, text in EDITING]
    rows += [f"| `{key}` | {text} |" for key, _, _, text, _, _ in KEYS]
    return "# eft-local chat — keys\n\n| key | what |\n|---|---|\n" + "\n".join(rows) + "\n" + ABOUT


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(help_markdown())
