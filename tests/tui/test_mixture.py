"""The chat app with several behaviour deltas: one weight control each, presets, compare."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_family, write_model
from eft_local.tui.app import EftChatApp
from eft_local.tui.screens.compare import CompareScreen
from tests.conftest import wait_for
from tests.tui.conftest import SIZE, loaded, send


@pytest.fixture(scope="module")
def mix_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("tui-mix")
    fam = write_family(d, chat_shift=0.6, base_shift=0.6)
    safe = write_model(
        d / "safe.gguf",
        ModelSpec(name="safe", output_shift=0.9, shift_seed=33, chat_template=CHATML_TEMPLATE, eos_id=IM_END),
        seed=0,
    )
    return {**fam.paths(), "safe": safe}


def mix_app(paths, **kw) -> EftChatApp:
    return EftChatApp(paths=paths, n_ctx=512, max_tokens=8, seed=1, n_threads=1, **kw)


async def test_weight_control_per_delta_reaches_the_decoder(mix_paths, spy):  # noqa: F811
    async with mix_app(mix_paths).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        field = app.query_one("#weight-safe", Input)
        assert field.value == "1"
        field.value = "nan"
        await pilot.pause(0.05)
        assert "finite" in str(app.query_one("#settings-error").render())
        field.value = "-0.5"
        await pilot.pause(0.05)
        assert app.settings.sampling.weights == {"safe": -0.5}
        assert "safe=-0.5" in app.settings.describe()
        await send(pilot, "hi")
        assert spy[-1][1].sampling.weights == {"safe": -0.5}
        assert "safe=-0.5" in app.conv.turns[-1].info  # the answer's title shows the mix


async def test_presets_zero_other_deltas_and_restore_the_mix(mix_paths):
    async with mix_app(mix_paths).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        app.query_one("#weight-safe", Input).value = "0.25"
        await pilot.pause(0.05)
        app.action_preset("chat")
        s = app.settings.sampling
        assert (s.alpha, s.beta, s.weights) == (1.0, 0.0, {"safe": 0.0}) and app.settings.mode == "chat"
        app.action_preset("eft")
        assert app.settings.sampling.weights == {"safe": 0.25}
        assert app.query_one("#weight-safe", Input).value == "0.25"


async def test_compare_shows_each_delta_alone(mix_paths, spy):  # noqa: F811
    async with mix_app(mix_paths).run_test(size=SIZE) as pilot:
        app = await loaded(pilot)
        await pilot.press(*"compare me", "ctrl+b")
        assert isinstance(app.screen, CompareScreen)
        await wait_for(pilot, lambda: not app.generating, what="compare")
        mixes = [(c.sampling.alpha, c.sampling.beta, dict(c.sampling.weights)) for _, c in spy]
        assert mixes == [
            (0.0, 1.0, {"safe": 0.0}),
            (1.0, 0.0, {"safe": 0.0}),
            (0.0, 1.0, {"safe": 1.0}),
            (1.0, 1.0, {"safe": 1.0}),
        ]
        titles = [c.border_title for c in app.screen.columns]
        assert titles[2].startswith("safe alone")


async def test_delta_with_own_reference_loads_and_load_panel_says_where(mix_paths):
    from eft_local.tui.widgets.load_panel import LoadPanel, where

    paths = {**mix_paths, "safe.reference": mix_paths["reference"]}
    app = mix_app(paths)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(LoadPanel)
        assert len(panel.query(".load-row")) == 5
        await loaded(pilot)
        assert app.engine.model_of["safe.reference"] == "reference"  # one context for the shared file
    assert where(0, ["10.0.0.5:50052"]) == "RPC 10.0.0.5:50052 + local"
    assert where(-1, None) == "GPU layers -1" and where(0, []) == "CPU only"
