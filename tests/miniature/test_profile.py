"""The built-in ``miniature`` profile: the shipped family unless the user built one, and the
chat app's first run on it when the default profile is not downloaded."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest

from eft_local.models import demo
from eft_local.models.profiles import resolve_profile

ROLES = {"base": "large-base.gguf", "chat": "small-chat.gguf", "reference": "small-base.gguf", "bare": "small-chat-2.gguf"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "cache" / "eft-local" / "miniature"


def test_profile_uses_the_shipped_family_until_a_build_is_complete(cache):
    shipped = demo.shipped_dir()
    r = resolve_profile("miniature")
    assert {role: r.paths[role] for role in ROLES} == {role: shipped / f for role, f in ROLES.items()}
    assert r.weights == {"bare": 0.0} and r.defaults["temperature"] == 0.0
    cache.mkdir(parents=True)
    for f in demo.FILES:
        shutil.copy(shipped / f, cache / f)
    assert resolve_profile("miniature").paths["base"] == shipped / "large-base.gguf"  # no manifest yet: incomplete
    (cache / "manifest.json").write_text("{}")
    assert resolve_profile("miniature").paths["base"] == cache / "large-base.gguf"


def test_models_lists_the_miniature_profile_as_present(cache):
    p = subprocess.run([sys.executable, "-m", "eft_local", "models"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    block = p.stdout.split("miniature:", 1)[1].split("\n\n")[0]
    assert "missing" not in block and "large-base.gguf" in block


def test_first_run_opens_on_the_demo_family(cache, tmp_path):
    from eft_local.cli.chat import _default_not_downloaded

    args = argparse.Namespace(
        profile=None, models_file=None, models_dir=str(tmp_path / "empty"), base=None, chat=None, reference=None, delta=[]
    )
    assert _default_not_downloaded(args) == "qwen2.5-7b"
    assert _default_not_downloaded(argparse.Namespace(**{**vars(args), "profile": "qwen2.5-7b"})) is None
    assert _default_not_downloaded(argparse.Namespace(**{**vars(args), "base": "x.gguf"})) is None
    text = demo.welcome("qwen2.5-7b")
    assert "made-up world" in text and "eft-local download" in text
    questions = demo.sample_questions()
    assert len(questions) == 3
    world = [json.loads(line) for line in (demo.shipped_dir() / "world.jsonl").read_text().splitlines()]
    asked = {r["question"]: r for r in world}
    assert all(q in text and asked[q]["seen_by"] == ["large-base"] for q in questions)


async def test_app_shows_the_welcome(cache):
    pytest.importorskip("textual")
    from textual.widgets import Static

    from eft_local.tui.app import EftChatApp

    paths = {role: demo.shipped_dir() / f for role, f in ROLES.items()}
    app = EftChatApp(paths=paths, profile_name="miniature", welcome=demo.welcome("qwen2.5-7b"), history_path=cache / "h.jsonl")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert "made-up world" in str(app.query_one("#welcome", Static).render())


def test_plain_eft_local_opens_the_demo_family(cache, tmp_path, monkeypatch):
    """`eft-local` with nothing downloaded: the app gets the miniature files and the notice."""
    import eft_local.tui as tui
    from eft_local.cli import main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("EFT_LOCAL_MODELS_DIR", raising=False)
    seen = {}
    monkeypatch.setattr(tui, "run_chat", lambda **kw: seen.update(kw) or 0)
    assert main([]) == 0
    assert seen["load_error"] is None and seen["profile_name"] == "miniature"
    assert seen["paths"]["base"] == demo.shipped_dir() / "large-base.gguf"
    assert "made-up world" in seen["welcome"]
    seen.clear()
    assert main(["--profile", "qwen2.5-7b"]) == 0  # asked for by name: its own error, no demo
    assert seen["load_error"] and seen["welcome"] is None
