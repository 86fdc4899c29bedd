"""EFT controls: α, β, temperature, top-p, speculative decoding, presets — applied live."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, Input, Label, Switch

from eft_local.errors import UserError
from eft_local.settings import check, check_weight
from eft_local.tui.settings import PRESETS, ChatSettings

FIELDS = (  # input id, label, hint
    ("alpha", "α behaviour", "chat − reference"),
    ("beta", "β scale", "base − reference"),
    ("temperature", "temperature", "0 = greedy"),
    ("top_p", "top-p", "1 = off"),
)


class SettingsPanel(VerticalScroll):
    """Every valid change applies at once. A field left with a value that isn't valid (Tab, Esc,
    Enter, a click elsewhere) shows the value in force again, so what the fields show is what the
    next answer uses; Enter in a field goes back to the prompt (``Done``)."""

    class Changed(Message):
        def __init__(self, settings: ChatSettings) -> None:
            super().__init__()
            self.settings = settings

    class Done(Message):
        """Enter in a field: the user is done with the controls."""

    def __init__(self, settings: ChatSettings, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.border_title = "EFT controls"
        self.border_subtitle = "Enter/Esc: back to chat"

    def compose(self) -> ComposeResult:
        with Horizontal(classes="presets"):
            for name, (title, _, _) in PRESETS.items():
                yield Button(title.replace(" alone", ""), id=f"preset-{name}", compact=True, tooltip=title)
        for key, label, hint in FIELDS:
            yield Label(f"{label}  [dim]{hint}[/]")
            yield Input(id=key, compact=True, select_on_focus=True)
            if key == "beta":
                yield from self._weight_fields()
        with Horizontal(classes="switch-row"):
            yield Label("speculative ")
            yield Switch(id="speculative")
        yield Label("block size  [dim]blank = adaptive[/]")
        yield Input(id="block", compact=True, select_on_focus=True)
        yield Label("max tokens")
        yield Input(id="max_tokens", compact=True, select_on_focus=True)
        yield Label("", id="settings-error")

    def _weight_fields(self) -> ComposeResult:
        """One weight control per further delta, named by the profile/--delta."""
        for name in self.settings.deltas:
            label = Label(f"weight {name}  [dim]its delta[/]", markup=True)
            yield label
            yield Input(id=f"weight-{name}", compact=True, select_on_focus=True)

    def on_mount(self) -> None:
        self.show(self.settings)

    def show(self, settings: ChatSettings) -> None:
        """Put ``settings`` into the inputs (e.g. after a preset)."""
        s = settings.sampling
        for key, value in (("alpha", s.alpha), ("beta", s.beta), ("temperature", s.temperature), ("top_p", s.top_p)):
            self.query_one(f"#{key}", Input).value = f"{value:g}"
        for name in settings.deltas:
            self.query_one(f"#weight-{name}", Input).value = f"{s.weights.get(name, 1.0):g}"
        self.query_one("#speculative", Switch).value = settings.speculative
        self.query_one("#block", Input).value = str(settings.block_size or "")
        self.query_one("#max_tokens", Input).value = str(settings.max_tokens)

    def _read(self) -> ChatSettings:
        def num(key: str) -> float:
            return check(key, self.query_one(f"#{key}", Input).value.strip(), key.replace("_", "-"))

        weights = {
            name: check_weight(name, self.query_one(f"#weight-{name}", Input).value.strip(), f"weight {name}")
            for name in self.settings.deltas
        }
        sampling = replace(
            self.settings.sampling,
            alpha=num("alpha"),
            beta=num("beta"),
            temperature=num("temperature"),
            top_p=num("top_p"),
            weights=weights,
        )
        block = self.query_one("#block", Input).value.strip()
        max_tokens = self.query_one("#max_tokens", Input).value.strip()
        block_size = check("draft_tokens", block, "block size") if block else None
        if block_size == 0:
            raise UserError("block size must be at least 1, or blank (adaptive); switch speculation off for naive EFT")
        return replace(
            self.settings,
            sampling=sampling,
            speculative=self.query_one("#speculative", Switch).value,
            block_size=block_size,
            max_tokens=check("max_tokens", max_tokens, "max tokens"),
        )

    def _apply(self) -> str | None:
        """Use the fields' values if all are valid; else show why. Returns the error, if any."""
        try:
            new = self._read()
        except UserError as e:
            self.set_class(True, "-invalid")
            error = self.query_one("#settings-error", Label)
            error.update(Content(f"✗ {e}"))  # e quotes what was typed
            if isinstance(self.screen.focused, Input) and self.screen.focused.parent is self:
                self.move_child(error, after=self.screen.focused)  # right under the field being typed in
            return str(e)
        self.set_class(False, "-invalid")
        self.query_one("#settings-error", Label).update("")
        if new != self.settings:
            self.settings.__dict__.update(new.__dict__)
            self.post_message(self.Changed(self.settings))
        return None

    def _revert_invalid(self) -> None:
        """A field left invalid shows the value in force again, and a notice says so."""
        error = self._apply()
        if error is not None:
            self.show(self.settings)
            self._apply()
            self.notify(f"{error} — the field shows the value in force again", severity="warning", markup=False)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._apply()

    def on_input_blurred(self, event: Input.Blurred) -> None:
        event.stop()
        self._revert_invalid()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._revert_invalid()
        self.post_message(self.Done())

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.apply_preset((event.button.id or "").removeprefix("preset-"))

    def apply_preset(self, name: str) -> None:
        self.settings.preset(name)
        self.show(self.settings)
        self.post_message(self.Changed(self.settings))
