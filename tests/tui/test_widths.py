"""Issue 21 §5: nothing that matters is cut at 80 columns or more; narrower lines shorten by
design (Fitted); the EFT controls give the focus back and show the value in force."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Footer, Input

from eft_local.engine.events import GenStats
from eft_local.tui import delta
from eft_local.tui.app import EftChatApp
from eft_local.tui.keys import KEYS, SHORT_LABELS
from eft_local.tui.settings import ChatSettings
from eft_local.tui.widgets.fitted import Fitted, first_fitting
from eft_local.tui.widgets.key_footer import labels_that_fit, row_width
from eft_local.tui.widgets.prompt_input import PLACEHOLDERS
from eft_local.tui.widgets.status_bar import StatusBar, context_short, context_text
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, app_for, loaded, no_models_app, send


def screen_text(app: EftChatApp) -> str:
    """What the terminal shows, line by line."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


def words(text: str) -> list[str]:
    return text.split()


def assert_whole(text: str, screen: str, what: str) -> None:
    """Every word of ``text`` shows (a wrapped line may break between words, never inside one)."""
    flat = " ".join(screen.split())
    missing = [w for w in words(text) if w not in flat]
    assert not missing, f"{what}: cut off {missing} of {text!r}"


# -- the pure parts ----------------------------------------------------------------------------
def test_first_fitting_takes_the_most_detailed_form_that_fits():
    forms = [Text("a long line"), Text("short"), Text("s")]
    assert first_fitting(forms, 80).plain == "a long line"
    assert first_fitting(forms, 5).plain == "short"
    assert first_fitting(forms, 0).plain == "s"  # nothing fits: the shortest


def test_status_bar_forms_shorten_and_keep_the_numbers():
    bar = StatusBar()
    bar.state, bar.settings = "generating", ChatSettings.create(None, None, 64, ("safe",)).describe_forms()
    bar.stats = GenStats(n_tokens=1234, seconds=1.0, drafted=10, accepted=4)
    bar.context = {"base": (1500, 4096), "chat": (1490, 4096), "reference": (1490, 4096)}
    forms = [f.plain for f in bar.forms()]
    assert [len(f) for f in forms] == sorted((len(f) for f in forms), reverse=True)
    assert "ctx base 1500 chat 1490 ref 1490 /4096" in forms[0] and "safe=1" in forms[0]
    for form in forms[:-1]:
        assert "tok/s" in form and "40%" in form and "1234 tok" in form
    assert all("ctx 1500/4096" in form for form in forms[1:-2])  # the fullest role's context
    assert forms[-1].strip() == "generating"


def test_context_short_names_the_fullest_role():
    context = {"base": (100, 4096), "chat": (300, 512), "reference": (100, 4096)}
    assert context_short(context) == "ctx 300/512"
    assert context_text(context) == "ctx base 100/4096 chat 300/512 ref 100/4096"


def test_legend_forms_get_shorter_and_keep_both_colours():
    forms = delta.legend_forms()
    assert [f.cell_len for f in forms] == sorted((f.cell_len for f in forms), reverse=True)
    for form in forms:
        assert len({span.style.bgcolor for span in form.spans if not isinstance(span.style, str)}) == 2


# -- the app at 80 and 100 columns ------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 100])
async def test_nothing_that_matters_is_cut(tui_family, width):
    app = app_for(tui_family)
    async with app.run_test(size=(width, 40)) as pilot:
        await loaded(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+t")
        await pilot.press("ctrl+g", "tab", "ctrl+u", *"NaN value")  # β: a field error
        await pilot.pause(0.1)
        screen = screen_text(app)
        header = app.conv.turns[-1].info
        assert_whole(f"assistant · {header}", screen, "the assistant header")
        assert_whole(str(app.query_one("#settings-error").render()), screen, "the field error")
        bar = app.query_one(StatusBar)
        shown = bar.shown
        assert shown in screen and len(shown) <= width
        for part in ("ready", "EFT", "tok/s", "acc", " tok", "ctx"):
            assert part in shown, f"the status bar lost {part!r}: {shown!r}"
        legend = app.query_one("#legend", Fitted)
        assert legend.shown in screen and "base" in legend.shown
        footer = " ".join(screen.splitlines()[-1].split())
        for _, _, label, _, show, _ in KEYS:
            if show:
                assert label in footer, f"the footer lost {label}: {footer!r}"
        assert app.query_one(Footer).compact == (width < 100)


@pytest.mark.parametrize("width", [20, 40, 60, 72])
async def test_narrow_lines_shorten_instead_of_being_cut(tui_family, width):
    app = app_for(tui_family, max_tokens=4)
    async with app.run_test(size=(width, 20)) as pilot:
        await loaded(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+t")
        await pilot.pause(0.05)
        for line in (app.query_one(StatusBar), app.query_one("#legend", Fitted)):
            assert line.render().cell_len <= max(line.content_size.width, 1) or line.render() == line.forms()[-1]
        prompt = app.prompt_input
        assert prompt.placeholder in (*PLACEHOLDERS, "") and len(prompt.placeholder) < max(prompt.content_size.width, 1)


# -- the footer below 80 columns: every key stays, its label abbreviated (F1 lists them all) ------------------
FOOTER_KEYS = [(action, label) for _, action, label, _, show, _ in KEYS if show]


def test_every_footer_key_has_a_shorter_label():
    assert set(SHORT_LABELS) == {action for action, _ in FOOTER_KEYS}
    assert all(cell_len(SHORT_LABELS[a]) < cell_len(label) for a, label in FOOTER_KEYS if len(label) > 4)


def test_labels_that_fit_shorten_as_a_whole():
    keys = [(a, "^x", label) for a, label in FOOTER_KEYS]
    full = row_width([(k, label) for _, k, label in keys])
    assert labels_that_fit(keys, full) == {a: label for a, label in FOOTER_KEYS}
    assert labels_that_fit(keys, full - 1) == {a: SHORT_LABELS[a] for a, _ in FOOTER_KEYS}
    assert set(labels_that_fit(keys, 10).values()) == {""}  # nothing fits: the keys alone


@pytest.mark.parametrize("width", [60, 64, 68, 71, 72, 76, 79])
async def test_below_80_columns_the_footer_abbreviates_instead_of_cutting(width):
    """Before: at 60 columns the footer ended '^g Con' and lost ^n New; at 70, '^n N'."""
    app = no_models_app()
    async with app.run_test(size=(width, 24)) as pilot:
        bindings = {b.action: b for b in app.BINDINGS}
        want = [(app.get_key_display(bindings[a]), label) for a, label in FOOTER_KEYS]
        short = [(key, SHORT_LABELS[a]) for (key, _), (a, _) in zip(want, FOOTER_KEYS)]
        shown = want if row_width(want) <= width else short
        assert (shown is short) == (width < 72)
        footer = lambda: screen_text(app).splitlines()[-1]  # noqa: E731
        await wait_for(pilot, lambda: "Quit" in footer() and "New" in footer(), what="the footer's keys")
        for key, label in shown:
            assert f"{key} {label}" in footer(), f"the footer lost {key} {label}: {footer()!r}"


# -- the EFT controls: focus goes back; a field shows the value in force ------------------------------
async def test_enter_in_a_control_goes_back_to_the_prompt(tui_family):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await pilot.press("ctrl+g", "tab")
        assert app.focused.id == "beta"
        await pilot.press("ctrl+u", "2", "enter")
        assert app.focused is app.prompt_input and app.settings.sampling.beta == 2.0
        assert app.query_one("#settings").display  # still beside the chat
        await pilot.press(*"my question")
        assert app.prompt_input.text == "my question" and app.query_one("#beta", Input).value == "2"


async def test_enter_from_the_controls_uncovers_the_chat_when_narrow():
    async with no_models_app().run_test(size=(60, 20)) as pilot:
        app = pilot.app
        await pilot.press("ctrl+g")
        assert not app.query_one("#chat-column").display
        await pilot.press("enter")
        assert app.query_one("#chat-column").display and app.focused is app.prompt_input


async def test_a_field_left_invalid_shows_the_value_in_force():
    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        for typed, leave in [("", "escape"), ("abc", "tab"), ("nan", "enter"), ("1e999", "ctrl+g"), ("-", "escape")]:
            app.prompt_input.focus()
            await pilot.press("ctrl+g")
            if app.focused.id != "alpha":  # ctrl+g hid the controls last time: show them again
                await pilot.press("ctrl+g")
            assert app.focused.id == "alpha"
            await pilot.press("ctrl+u", *typed)
            assert str(app.query_one("#settings-error").render()).startswith("✗ alpha"), typed
            await pilot.press(leave)
            await pilot.pause(0.02)
            assert app.query_one("#alpha", Input).value == "1" and app.settings.sampling.alpha == 1.0, (typed, leave)
            assert "α=1" in app.settings.describe()
            assert not str(app.query_one("#settings-error").render())
            assert not app.query_one("#settings").has_class("-invalid")
            assert "value in force" in str(list(app._notifications)[-1].message)
