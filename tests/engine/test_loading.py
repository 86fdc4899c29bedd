"""The engine-layer loader that the CLI and the chat app share (eft_local.engine.loading)."""

from __future__ import annotations

import pytest

from eft_local.engine import loading
from eft_local.engine.eft_engine import EftEngine
from eft_local.engine.loading import LoadOptions, load_engine
from eft_local.errors import UserError
from eft_local.llama.synthetic import write_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return write_family(tmp_path_factory.mktemp("loading-family"))


@pytest.fixture
def loads(monkeypatch):
    """Records every EftEngine.load call (the models actually loading)."""
    calls = []
    real = EftEngine.load.__func__

    def load(cls, paths, **kwargs):
        calls.append(dict(kwargs))
        return real(cls, paths, **kwargs)

    monkeypatch.setattr(EftEngine, "load", classmethod(load))
    return calls


@pytest.mark.parametrize("broken", ["missing", "not gguf", "a folder"])
def test_every_file_is_checked_before_any_model_loads(family, tmp_path, loads, broken):
    paths = family.paths()
    bad = tmp_path / "last.gguf"
    if broken == "not gguf":
        bad.write_bytes(b"PK\x03\x04 a zip file")
    elif broken == "a folder":
        bad.mkdir()
    paths["reference"] = bad
    with pytest.raises(UserError, match="last.gguf"):
        load_engine(paths)
    assert loads == []  # failed before minutes went into loading base and chat


def test_options_and_progress_reach_the_engine(family, loads):
    seen = {}
    engine = load_engine(family.paths(), LoadOptions(n_ctx=512, n_threads=1), on_progress=seen.__setitem__)
    try:
        assert loads[0]["n_ctx"] == 512 and loads[0]["n_threads"] == 1
        assert engine.models["base"].n_ctx == 512
        assert set(seen) >= {"base", "chat"} and all(f == 1.0 for f in seen.values())
    finally:
        engine.close()


def test_cli_and_app_load_through_it(family, monkeypatch):
    """Both front ends call the one loader (the CLI keeps its stderr progress lines)."""
    from eft_local.cli import options

    calls = []
    monkeypatch.setattr(loading, "load_engine", lambda paths, opts, on_progress=None: calls.append(opts) or "engine")
    settings = {"n_ctx": 300, "threads": 2, "n_gpu_layers": 0, "rpc": {}}
    monkeypatch.setattr(options, "gpu_layers", lambda s: 0)
    assert options.load_engine(family.paths(), settings, n_seq=3) == "engine"
    assert calls == [LoadOptions(n_ctx=300, n_gpu_layers=0, n_threads=2, n_seq=3)]


# -- the app loads through it, in LoadPanel's worker ---------------------------------------------------
@pytest.fixture
def xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


async def test_app_fails_fast_on_a_bad_last_file(family, tmp_path, loads, xdg):
    from eft_local.tui.app import EftChatApp
    from eft_local.tui.widgets.load_panel import ErrorPanel
    from tests.conftest import wait_for

    bad = tmp_path / "reference.gguf"
    bad.write_text("not a model")
    app = EftChatApp(paths={**family.paths(), "reference": bad}, n_ctx=512, n_threads=1)
    async with app.run_test(size=(110, 36)) as pilot:
        await wait_for(pilot, lambda: app.query(ErrorPanel), what="the error panel")
        assert "not a GGUF model file" in str(app.query_one(ErrorPanel).render())
        assert loads == [] and app.engine is None


async def test_models_that_finish_loading_after_quit_are_freed(family, monkeypatch, xdg):
    import threading

    from eft_local.tui.app import EftChatApp
    from eft_local.tui.widgets import load_panel

    release, closed = threading.Event(), threading.Event()

    class SlowEngine:
        def close(self) -> None:
            closed.set()

    def slow_load(paths, options, on_progress=None):
        release.wait(10)
        return SlowEngine()

    monkeypatch.setattr(load_panel, "load_engine", slow_load)
    app = EftChatApp(paths=family.paths(), n_ctx=512, n_threads=1)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.pause(0.05)
        app.exit()
    release.set()
    assert closed.wait(5), "the engine loaded after quit was never closed"


@pytest.mark.parametrize("gpu", [True, False])
def test_a_library_load_offloads_every_layer_when_a_gpu_can_take_them(family, monkeypatch, gpu):
    """The default of every front end and of ``EftEngine.load`` alike: all layers on a GPU
    build, none on a CPU one; an explicit number stands."""
    from eft_local.cli.options import gpu_layers as cli_gpu_layers
    from eft_local.llama import rpc

    monkeypatch.setattr(rpc, "has_local_gpu", lambda: gpu)
    engine = EftEngine.load(family.paths(), n_ctx=64, n_threads=1)
    try:
        assert {m.n_gpu_layers for m in engine.models.values()} == {-1 if gpu else 0}
    finally:
        engine.close()
    assert cli_gpu_layers({"gpu_layers": None}) == (-1 if gpu else 0)
    assert loading.gpu_layers(0) == 0 and loading.gpu_layers(None, {"base": ["h:1"]}) == -1
