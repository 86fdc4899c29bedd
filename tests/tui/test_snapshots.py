"""Snapshots of the main screens (fixed size, no blinking cursor, no timing numbers)."""

from __future__ import annotations

import time

import pytest

from eft_local.llama.synthetic import write_family
from eft_local.tui.app import EftChatApp
from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.widgets.prompt_input import PromptInput

SIZE = (110, 34)


@pytest.fixture(scope="module")
def snap_family(tmp_path_factory):
    return write_family(tmp_path_factory.mktemp("snap-family"))


@pytest.fixture(autouse=True)
def xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def chat_app(family) -> EftChatApp:
    return EftChatApp(paths=family.paths(), n_ctx=512, n_threads=1, seed=1, profile_name="synthetic")


async def ready(pilot) -> None:
    end = time.monotonic() + 20
    while pilot.app.engine is None and not pilot.app.load_error:
        assert time.monotonic() < end, "models did not load"
        await pilot.pause(0.02)
    pilot.app.query_one(PromptInput).cursor_blink = False
    await pilot.pause()


def test_main_screen(snap_compare, snap_family):
    assert snap_compare(chat_app(snap_family), terminal_size=SIZE, run_before=ready)


def test_help_screen(snap_compare, snap_family):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f1")

    assert snap_compare(chat_app(snap_family), terminal_size=SIZE, run_before=run_before)


def test_load_error_screen(snap_compare):
    app = EftChatApp(paths=None, load_error="missing file Qwen2.5-7B-Q4_K_M.gguf; run `eft-local download qwen2.5-7b`")
    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_delta_view(snap_compare, snap_family):
    spans = [("The", 0.1), (" capital", 2.5), (" of", -0.3), (" France", 0.0), (" is", 1.2), (" Paris", -2.2), (".", 4.5)]
    conv = Conversation(
        turns=[
            Turn("user", "What is the capital of France?"),
            Turn("assistant", "".join(t for t, _ in spans), spans=spans, stopped=True, info="EFT α=1 β=1 greedy"),
        ]
    )

    async def run_before(pilot):
        await ready(pilot)
        pilot.app.conv = conv
        await pilot.app.chat_view.show(conv)
        await pilot.press("ctrl+t")

    assert snap_compare(chat_app(snap_family), terminal_size=SIZE, run_before=run_before)
