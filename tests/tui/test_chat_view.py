"""The chat pane keeps the model's line breaks."""

from __future__ import annotations

from eft_local.tui.conversation import Conversation, Turn
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, no_models_app

# -- the chat pane keeps the model's line breaks ----------------------------------------------------------
POEM = "Roses are red,\nviolets are blue,\nsugar is sweet.\n\nA new verse\nstarts here."


def paragraphs(widget) -> list[str]:
    from textual.widgets._markdown import MarkdownParagraph

    return [str(p.render()) for p in widget.query(MarkdownParagraph)]


async def test_chat_pane_keeps_single_line_breaks():
    from eft_local.engine.events import FinishedEvent, GenStats
    from eft_local.tui.stream import GenerationFinished, TokensArrived
    from eft_local.tui.widgets.chat_view import AssistantMessage, UserMessage

    async with no_models_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        app.conv = Conversation(turns=[Turn("user", "line one\nline two"), Turn("assistant", POEM)])
        await app.chat_view.show(app.conv)
        await pilot.pause(0.05)
        expected = ["Roses are red,\nviolets are blue,\nsugar is sweet.", "A new verse\nstarts here."]
        assert paragraphs(app.query_one(AssistantMessage)) == expected
        assert paragraphs(app.query_one(UserMessage)) == ["line one\nline two"]
        streamed = await app.chat_view.add_assistant(Turn("assistant", ""))  # the streaming path
        for piece in (POEM[:20], POEM[20:]):
            streamed.post_message(TokensArrived(streamed, piece, [(piece, None)]))
            await pilot.pause(0.05)
        streamed.post_message(GenerationFinished(streamed, FinishedEvent("stop", POEM, [], GenStats()), {}))
        await wait_for(pilot, lambda: paragraphs(streamed) == expected, timeout=5, what="the streamed poem")
