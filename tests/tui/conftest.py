"""The chat app's harness: an isolated home, the app over the synthetic family or without models,
and the waits that Pilot tests share."""

from __future__ import annotations

import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.tui.app import EftChatApp
from tests.conftest import wait_for

SIZE = (110, 36)


@pytest.fixture(autouse=True)
def xdg(tmp_path, monkeypatch):
    """History, settings and exports of each test live in its own temporary home."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tui_family(family):
    return family


@pytest.fixture
def spy(monkeypatch):
    """Records the GenerationConfig of every engine.generate call."""
    calls = []
    real = EftEngine.generate

    def generate(self, prompt, config, rng, cancel=None):
        calls.append((prompt, config))
        return real(self, prompt, config, rng, cancel)

    monkeypatch.setattr(EftEngine, "generate", generate)
    return calls


async def loaded(pilot) -> EftChatApp:
    app = pilot.app
    await wait_for(pilot, lambda: app.engine is not None or app.load_error, what="models to load")
    assert app.engine is not None, app.load_error
    return app


async def send(pilot, text: str) -> None:
    await pilot.press(*text, "enter")
    await wait_for(pilot, lambda: not pilot.app.generating, what="the answer")
    await pilot.pause(0.05)


def app_for(family, **kwargs) -> EftChatApp:
    kwargs = {"n_ctx": 512, "max_tokens": 24, "seed": 1, "n_threads": 1, **kwargs}
    return EftChatApp(paths=family.paths(), **kwargs)


def no_models_app(**kwargs) -> EftChatApp:
    """The app without models (history, help and export work without them): starts fast."""
    return EftChatApp(paths=None, load_error="no models in this test", **kwargs)
