"""The chat app driven with Pilot against real (tiny, synthetic) llama.cpp models."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Static

from eft_local.llama.adapter import LlamaModel
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.settings import SETTINGS
from eft_local.tui.app import EftChatApp
from eft_local.tui.history import HistoryStore
from eft_local.tui.screens.compare import CompareScreen
from eft_local.tui.screens.history import HistoryScreen
from eft_local.tui.widgets.chat_view import AssistantMessage
from eft_local.tui.widgets.load_panel import ErrorPanel
from eft_local.tui.widgets.prompt_input import PromptInput
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, app_for, loaded, send


@pytest.fixture(scope="module")
def slow_family(tmp_path_factory):
    """Wider and deeper: a long answer takes seconds, so streaming and Esc are observable."""
    return write_family(tmp_path_factory.mktemp("tui-slow"), shape=ModelSpec(n_embd=256, n_layer=4), extra_layers=8)


async def test_streams_before_end_and_esc_keeps_partial_answer(slow_family, monkeypatch):
    monkeypatch.setattr(LlamaModel, "is_eog", lambda self, token: False)  # answer runs to max_tokens
    app = app_for(slow_family, n_ctx=6144, max_tokens=1900)  # room for the partial answer re-tokenized
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press(*"hello", "enter")
        await wait_for(pilot, lambda: app.conv.turns[-1].content, what="streamed text")
        assert app.generating, "text must appear while the answer is still being generated"
        widget = app.query(AssistantMessage).last()
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating, timeout=5, what="stop after Esc")
        answer = app.conv.turns[-1]
        assert answer.stopped and answer.content
        assert len(answer.spans) < 1900
        assert "stopped" in str(widget.query_one(".note").render())
        # still responsive: the next turn completes and sees the partial answer in its history
        app.settings.max_tokens = 5
        await send(pilot, "more")
        assert [t.role for t in app.conv.turns] == ["user", "assistant", "user", "assistant"]
        assert not app.conv.turns[-1].stopped


async def test_alpha_beta_changes_reach_the_decoder(tui_family, spy):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+g")  # focus α (its text is selected)
        assert app.focused.id == "alpha"
        await pilot.press("0", ".", "5", "tab")  # β is selected on focus
        await pilot.press("2", "escape")  # Esc back to the prompt
        await send(pilot, "again")
        await pilot.press("f6")  # preset: chat alone
        await send(pilot, "third")
        got = [(c.sampling.alpha, c.sampling.beta) for _, c in spy]
        assert got == [(1.0, 1.0), (0.5, 2.0), (1.0, 0.0)]
        assert app.conv.turns[3].content != app.conv.turns[5].content
        assert app.query_one("#alpha", Input).value == "1"
        assert app.query_one("#beta", Input).value == "0"


async def test_invalid_setting_is_flagged_and_not_used(tui_family, spy):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await pilot.press("ctrl+g", "tab", "tab")
        assert app.focused.id == "temperature"
        await pilot.press("minus", "1")
        assert "temperature" in str(app.query_one("#settings-error").render())
        await pilot.press("escape")  # left invalid: the field shows the value in force again
        assert app.query_one("#temperature", Input).value == f"{SETTINGS['temperature'].default:g}"
        await send(pilot, "hi")
        assert spy[-1][1].sampling.temperature == SETTINGS["temperature"].default  # the last valid value


async def test_multi_turn_reuses_kv_prefix(tui_family, spy, monkeypatch):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "first question")
        evaluated: list[int] = []
        base = app.engine.models["base"]
        real_eval = type(base).eval
        monkeypatch.setattr(
            type(base), "eval", lambda m, toks, n: (evaluated.append(len(toks)) if m is base else None) or real_eval(m, toks, n)
        )
        await send(pilot, "second")
        prompt = spy[-1][0]["base"]
        first_prompt = spy[0][0]["base"]
        assert prompt[: len(first_prompt)] == first_prompt  # history went through the template
        assert sum(evaluated[:1]) < len(prompt) - len(first_prompt) + 8  # prefill re-evaluated only the new turn


async def test_load_error_is_shown(tmp_path):
    app = EftChatApp(paths=None, load_error="missing file base.gguf; run `eft-local download qwen2.5-7b`")
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(ErrorPanel)
        assert "eft-local download qwen2.5-7b" in str(panel.render())
        await pilot.press(*"hi", "enter")
        assert app.conv.turns == []
    bad = {"base": tmp_path / "nope.gguf", "chat": tmp_path / "nope.gguf", "reference": tmp_path / "nope.gguf"}
    app = EftChatApp(paths=bad)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query(ErrorPanel), what="error panel")
        assert "model file not found" in str(app.query_one(ErrorPanel).render())
        assert app.engine is None


async def test_delta_view_colours_tokens(tui_family):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+t")
        widget = app.query(AssistantMessage).last()
        coloured = widget.query_one(".delta", Static)
        assert coloured.display and not widget.query_one(".body").display
        assert coloured.render().plain == widget.turn.content
        assert any(span.style.bgcolor for span in widget.colored.spans)
        assert app.query_one("#legend").display
        await pilot.press("ctrl+t")
        assert widget.query_one(".body").display and not coloured.display


async def test_compare_runs_three_corners(tui_family, spy):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await pilot.press(*"compare me", "ctrl+b")
        assert isinstance(app.screen, CompareScreen)
        await wait_for(pilot, lambda: not app.generating, what="compare")
        assert [(c.sampling.alpha, c.sampling.beta) for _, c in spy] == [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
        answers = [a.turn.content for a in app.screen.answers]
        assert all(answers) and len(set(answers)) == 3
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)
        assert app.conv.turns == []  # comparing does not change the conversation


async def test_regenerate_copy_export_new_chat(tui_family, spy, tmp_path):
    async with app_for(tui_family, max_tokens=8).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "hi")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.generating, what="regenerated answer")
        assert [t.role for t in app.conv.turns] == ["user", "assistant"] and len(spy) == 2
        await pilot.press("ctrl+y")
        assert app.clipboard == app.conv.turns[-1].content
        await pilot.press("f4")
        exported = list(tmp_path.glob("eft-chat-*.md"))
        assert len(exported) == 1 and "## User" in exported[0].read_text()
        await pilot.press("ctrl+n")
        assert app.conv.turns == [] and not app.query(AssistantMessage)


async def test_history_saved_and_reopened(tui_family, tmp_path):
    async with app_for(tui_family, system_prompt="be brief").run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "remember me")
        answer = app.conv.turns[-1].content
    store = HistoryStore()
    assert str(store.path).startswith(str(tmp_path / "data"))
    (chat,) = store.list()
    assert chat.title == "remember me" and chat.n_turns == 2
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, HistoryScreen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.conv.turns, what="chat to open")
        assert app.conv.system_prompt == "be brief" and app.conv.turns[-1].content == answer
        assert len(app.query(AssistantMessage)) == 1


async def test_up_and_down_recall_sent_messages(tui_family):
    async with app_for(tui_family).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await send(pilot, "first")
        await send(pilot, "second")
        box = app.query_one(PromptInput)
        await pilot.press(*"draft")
        await pilot.press("up")
        assert box.text == "second"
        await pilot.press("up", "up")  # past the oldest stays on it
        assert box.text == "first"
        await pilot.press("down")
        assert box.text == "second"
        await pilot.press("down")
        assert box.text == "draft"  # back to what was being typed
