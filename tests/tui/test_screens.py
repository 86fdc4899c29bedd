"""The help screen's text."""

from __future__ import annotations

from eft_local.tui.screens.help import HelpScreen
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, no_models_app


# -- F1 help: the formula is a line of its own --------------------------------------------------------------
async def test_help_formula_does_not_run_into_the_next_sentence():
    from textual.widgets._markdown import MarkdownParagraph

    async with no_models_app().run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), what="help")
        await pilot.pause(0.1)
        texts = [str(p.render()) for p in pilot.app.screen.query(MarkdownParagraph)]
        formula = [t for t in texts if t.startswith("z = ")]
        assert formula and formula[0].endswith("(base − reference)"), texts
