"""Every setting reaches the engine, from every front end that accepts it.

Table-driven from ``settings.SETTINGS``: each setting (plus the mix's delta ``weights`` and
``draft_with``, which are not ``Setting``s) has one row in ``ROWS``: a non-default value and how
to read what the engine received. Each front end in ``FRONT_ENDS`` that accepts the setting —
``run``/``chat``/``serve`` flags, a profile's ``defaults`` under each of those commands,
``--grid``, a JSONL row, an HTTP request field (both also with ``--parallel``: the scheduler's
path), the chat app's settings panel and system-prompt screen, and chat flags followed by
panel edits — sets that value and drives real generations on a tiny synthetic family, while
spies on the engine's public entry points record what it got:

- ``EftEngine.load``: ``n_ctx``, ``n_gpu_layers``, ``n_threads``, ``n_seq``;
- ``EftEngine.generate`` and ``Scheduler.submit`` (``run_all`` submits through it): the
  ``GenerationConfig``, the RNG's state at the call (a seed is checked against
  ``session.rng_for(seed, i)``) and the prompt ids (checked against ``engine.prompt``).

A new setting without a row fails ``test_every_setting_has_a_row``; a front end that accepts a
setting but drops it fails ``test_setting_reaches_the_engine`` (every accepted setting at
once, one run per front end) and ``test_setting_alone_reaches_the_engine`` (one at a time,
``slow``); ``test_control_run_differs`` proves each check tells a run with its setting from one
without. Where a front end does not accept a setting it must say so: a JSONL row and an HTTP
request refuse run-wide settings, ``run --raw`` refuses the template's.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from eft_local.cli import build_parser, main
from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.scheduler import Scheduler
from eft_local.engine.session import rng_for, with_system
from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_family, write_model
from eft_local.settings import GRID_KEYS, PROFILE_KEYS, REQUEST_KEYS, ROW_KEYS, SETTINGS

PROMPT = "hello there"
PROMPTS = 2  # a batch of two, so that --parallel 2 really runs two at once
DELTA = "safe"  # the family's second behaviour delta
# Settings every run gets (fast runs); a row's value always differs from these and from the default.
SPEED = {"n_ctx": 256, "max_tokens": 3, "threads": 1}
PROFILE = "reach"


# -- what the engine received ------------------------------------------------------------------
@dataclass
class Call:
    """One generation handed to the engine."""

    via: str  # "generate" (one at a time) or "scheduler" (--parallel)
    prompt: dict[str, list[int]]
    config: GenerationConfig
    rng_state: dict[str, Any]  # the RNG's state before the generation drew from it
    index: int = 0  # which stream rng_for(seed, index) it should be: set by the front end's driver


@dataclass
class Spy:
    loads: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def record(self, via: str, prompt, config: GenerationConfig, rng) -> None:
        state = copy.deepcopy(rng.bit_generator.state)
        self.calls.append(Call(via, {k: list(v) for k, v in prompt.items()}, copy.deepcopy(config), state))


@contextmanager
def spying(folder: Path) -> Iterator[Spy]:
    """Spies on the engine's public entry points, in a folder and XDG dirs of its own."""
    spy = Spy()
    real_load, real_generate, real_submit = EftEngine.load.__func__, EftEngine.generate, Scheduler.submit

    def load(cls, paths, **kwargs):
        spy.loads.append(kwargs)
        return real_load(cls, paths, **kwargs)

    def generate(self, prompt, config, rng, cancel=None):
        spy.record("generate", prompt, config, rng)
        return real_generate(self, prompt, config, rng, cancel)

    def submit(self, prompt, config, rng, cancel=None, tag=None):
        spy.record("scheduler", prompt, config, rng)
        return real_submit(self, prompt, config, rng, cancel, tag)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(folder / "data"))
        mp.setenv("XDG_CONFIG_HOME", str(folder / "config"))
        mp.chdir(folder)
        mp.setattr(EftEngine, "load", classmethod(load))
        mp.setattr(EftEngine, "generate", generate)
        mp.setattr(Scheduler, "submit", submit)
        yield spy


# -- the models ---------------------------------------------------------------------------------
@dataclass
class World:
    """A tiny family with a second delta, laid out as a models dir, plus an engine that
    computes the prompt ids a setting should produce."""

    models_dir: Path
    files: dict[str, Path]
    engine: EftEngine

    def expected_prompt(self, prompt_style: str | None = None, system_prompt: str | None = None) -> dict[str, list[int]]:
        messages = with_system([{"role": "user", "content": PROMPT}], system_prompt)
        return self.engine.prompt(messages=messages, style=prompt_style or SETTINGS["prompt_style"].default)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach")
    folder = root / "t" / "fam"
    fam = write_family(folder, chat_shift=0.6, base_shift=0.6)
    spec = ModelSpec(name=DELTA, output_shift=0.9, shift_seed=33, chat_template=CHATML_TEMPLATE, eos_id=IM_END)
    files = {**fam.paths(), DELTA: write_model(folder / f"{DELTA}.gguf", spec, seed=0)}
    engine = EftEngine.load(files, n_ctx=256, n_threads=1)
    yield World(root, files, engine)
    engine.close()


# -- the table: one row per setting -------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    value: Any  # set through the front end; never the default, never the SPEED value
    received: Callable[[Spy, Call], Any]  # what the engine got
    # what it should have got, given every value set in the run (None: this row's value)
    expected: Callable[[World, Call, dict[str, Any]], Any] | None = None


def sampling(name: str) -> Callable[[Spy, Call], Any]:
    return lambda _spy, call: getattr(call.config.sampling, name)


def config(name: str) -> Callable[[Spy, Call], Any]:
    return lambda _spy, call: getattr(call.config, name)


def loaded(keyword: str) -> Callable[[Spy, Call], Any]:
    return lambda spy, _call: spy.loads[-1][keyword]


def expected_prompt(world: World, _call: Call, values: dict[str, Any]) -> dict[str, list[int]]:
    return world.expected_prompt(values.get("prompt_style"), values.get("system_prompt"))


def expected_rng(_world: World, call: Call, values: dict[str, Any]) -> dict[str, Any]:
    return rng_for(values["seed"], call.index).bit_generator.state


ROWS: dict[str, Row] = {
    "alpha": Row(0.25, sampling("alpha")),
    "beta": Row(0.5, sampling("beta")),
    "temperature": Row(0.3, sampling("temperature")),
    "top_p": Row(0.8, sampling("top_p")),
    "top_k": Row(7, sampling("top_k")),
    "min_p": Row(0.05, sampling("min_p")),
    "typical_p": Row(0.9, sampling("typical_p")),
    "top_p_mode": Row("base", sampling("top_p_mode")),
    "seed": Row(1234, lambda _spy, call: call.rng_state, expected_rng),
    "max_tokens": Row(2, config("max_tokens")),
    "draft_tokens": Row(3, config("draft_tokens")),
    "stop": Row(("zz",), lambda _spy, call: tuple(call.config.stop)),
    "prompt_style": Row("transcript", lambda _spy, call: call.prompt, expected_prompt),
    "system_prompt": Row("Be brief.", lambda _spy, call: call.prompt, expected_prompt),
    "n_ctx": Row(200, loaded("n_ctx")),
    "gpu_layers": Row(1, loaded("n_gpu_layers")),  # the default resolves to 0 (CPU) or -1 (GPU)
    "threads": Row(2, loaded("n_threads")),
    "parallel": Row(
        2,
        lambda spy, _call: (spy.loads[-1]["n_seq"], {c.via for c in spy.calls}),
        lambda _w, _c, values: (values["parallel"], {"scheduler"}),
    ),
    # the mix, besides SETTINGS: a further delta's weight, and which delta drafts
    "weights": Row({DELTA: -0.5}, lambda _spy, call: dict(call.config.sampling.weights)),
    "draft_with": Row(DELTA, config("draft_with")),
}
MIX = ("weights", "draft_with")


# -- driving one front end ----------------------------------------------------------------------------
def json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def flags(name: str, value: Any) -> list[str]:
    if name == "weights":
        return [arg for d, w in value.items() for arg in ("--weight", f"{d}={w}")]
    if name == "draft_with":
        return ["--draft-with", value]
    flag = SETTINGS[name].cli_flag
    if isinstance(value, (list, tuple)):
        return [arg for v in value for arg in (flag, v)]
    return [flag, str(value)]


def grid_args(name: str, value: Any) -> list[str]:
    if name == "weights":
        return [arg for d, w in value.items() for arg in ("--grid", f"weight.{d}={w}")]
    return ["--grid", f"{name}={value}"]


def write_profile(world: World, folder: Path, defaults: dict[str, Any]) -> Path:
    """A models.toml whose one profile is the world's family, with ``defaults`` (and a delta weight)."""
    defaults = dict(defaults)
    weights = defaults.pop("weights", {})

    def role(r: str) -> str:
        return f'{{ repo_id = "t/fam", filename = "{world.files[r].name}" }}'

    lines = [f"[profiles.{PROFILE}]"] + [f"{r} = {role(r)}" for r in ("base", "chat", "reference")]
    lines += [f"[profiles.{PROFILE}.deltas.{DELTA}]", f"chat = {role(DELTA)}"]
    lines += [f"weight = {weights[DELTA]}"] if DELTA in weights else []
    lines += [f"[profiles.{PROFILE}.defaults]"] + [f"{k} = {json.dumps(json_value(v))}" for k, v in defaults.items()]
    path = folder / "models.toml"
    path.write_text("\n".join(lines) + "\n")  # (TOML writes numbers, strings and string lists as JSON does)
    return path


def command_line(world: World, folder: Path, flag: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """The profile, then flags: the SPEED settings (unless the profile sets them) and ``flag``."""
    toml = write_profile(world, folder, profile)
    args = ["--profile", PROFILE, "--models-file", str(toml), "--models-dir", str(world.models_dir)]
    for name, value in {**{k: v for k, v in SPEED.items() if k not in profile}, **flag}.items():
        args += flags(name, value)
    return args


def drive_run(world: World, spy: Spy, folder: Path, *, flag=None, profile=None, grid=None, row=None) -> None:
    """``eft-local run`` on two prompts (``row`` in each JSONL line), every point of ``grid``."""
    prompts = folder / "prompts.jsonl"
    line = json.dumps({"prompt": PROMPT, **{k: json_value(v) for k, v in (row or {}).items()}})
    prompts.write_text((line + "\n") * PROMPTS)
    out = folder / "out.jsonl"
    extra = [arg for name, value in (grid or {}).items() for arg in grid_args(name, value)]
    args = ["run", "--prompt-file", str(prompts), "--output", str(out), *extra]
    rc = main([*args, *command_line(world, folder, flag or {}, profile or {})])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0 and len(rows) == PROMPTS and all(r["finish_reason"] != "error" for r in rows), rows
    for i, call in enumerate(spy.calls):
        call.index = i  # prompt i draws from rng_for(seed, i)


def drive_serve(world: World, spy: Spy, folder: Path, *, flag=None, profile=None, body=None) -> None:
    """``eft-local serve`` up to its listening socket; then one request through the app it built
    (uvicorn's ``Server.run`` replaced by a TestClient on the same app)."""
    answers = []
    request = {"messages": [{"role": "user", "content": PROMPT}], **{k: json_value(v) for k, v in (body or {}).items()}}

    def serve(server, sockets=None) -> None:
        with TestClient(server.config.app, base_url="http://127.0.0.1") as client:
            answers.append(client.post("/v1/chat/completions", json=request))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn.Server, "run", serve)
        rc = main(["serve", "--host", "127.0.0.1", "--port", "0", *command_line(world, folder, flag or {}, profile or {})])
    assert rc == 0 and answers and answers[0].status_code == 200, answers and answers[0].text


def drive_chat(world: World, spy: Spy, folder: Path, *, flag=None, profile=None, fields=None) -> None:
    """``eft-local chat`` up to the app's options; then the app itself (Pilot): load, type
    ``fields`` (setting -> value) into the settings panel (the system prompt into its Ctrl+S
    screen), send one prompt, wait for the answer."""
    import eft_local.tui

    options: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eft_local.tui, "run_chat", lambda **kw: options.update(kw) or 0)
        assert main(["chat", *command_line(world, folder, flag or {}, profile or {})]) == 0
    asyncio.run(_chat(options, folder, dict(fields or {})))
    for i, call in enumerate(spy.calls):
        call.index = i  # the app's i-th generation draws from rng_for(seed, i)


async def _chat(options: dict[str, Any], folder: Path, fields: dict[str, Any]) -> None:
    from textual.widgets import Input

    from eft_local.tui.app import EftChatApp
    from eft_local.tui.widgets.prompt_input import PromptInput

    app = EftChatApp(**options, history_path=folder / "history.sqlite")
    async with app.run_test(size=(110, 36)) as pilot:
        await _until(pilot, lambda: app.engine is not None or app.load_error, "models to load")
        assert app.engine is not None, app.load_error
        for name in fields:
            if name == "system_prompt":
                await _edit_system_prompt(pilot, fields[name])
            else:
                input_id, text = APP_FIELDS[name]
                app.query_one(f"#{input_id}", Input).value = text
                await pilot.pause()
        assert "-invalid" not in app.query_one("#settings").classes
        app.query_one(PromptInput).text = PROMPT  # (typing it key by key costs a second)
        await pilot.press("enter")
        await _until(pilot, lambda: app.n_generations and not app.generating, "the answer")


async def _edit_system_prompt(pilot, text: str) -> None:
    from textual.widgets import TextArea

    from eft_local.tui.screens.system_prompt import SystemPromptScreen

    await pilot.press("ctrl+s")
    await _until(pilot, lambda: isinstance(pilot.app.screen, SystemPromptScreen), "the system prompt screen")
    pilot.app.screen.query_one(TextArea).text = text
    await pilot.press("ctrl+s")
    await _until(pilot, lambda: not isinstance(pilot.app.screen, SystemPromptScreen), "the system prompt saved")


async def _until(pilot, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await pilot.pause(0.02)


def flags_then_fields(world: World, spy: Spy, folder: Path, values: dict[str, Any]) -> None:
    """Flags for what the settings panel lacks, the panel's fields typed: editing the panel
    must keep every setting it does not show."""
    fields = {k: v for k, v in values.items() if k in app_settings()}
    drive_chat(world, spy, folder, flag={k: v for k, v in values.items() if k not in fields}, fields=fields)


def in_parallel(drive_: Callable[..., None], key: str) -> Callable[..., None]:
    """``drive_`` with ``--parallel 2``: the settings ride the scheduler's path."""

    def drive(world: World, spy: Spy, folder: Path, values: dict[str, Any]) -> None:
        drive_(world, spy, folder, flag={"parallel": 2}, **{key: values})
        assert {c.via for c in spy.calls} == {"scheduler"}

    return drive


# -- the front ends -------------------------------------------------------------------------------
def cli_settings(command: str) -> set[str]:
    """Rows whose flag the command's parser has (``dest`` is the setting's name)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    dests = {a.dest for a in sub._actions}
    return {name for name in ROWS if name in dests or name == "weights" and "weight" in dests}


def profile_settings(command: str) -> set[str]:
    return (set(PROFILE_KEYS) | {"weights"}) & cli_settings(command)


def per_prompt() -> set[str]:
    """What a JSONL row and an HTTP request may set: the per-prompt settings and delta weights."""
    return {*ROW_KEYS, "weights"}


def app_settings() -> set[str]:
    """What the chat app lets its user change: the settings panel's fields and the system prompt."""
    return {*APP_FIELDS, "system_prompt"}


# the chat app's settings panel: setting -> (input id, text typed)
APP_FIELDS = {
    "alpha": ("alpha", "0.25"),
    "beta": ("beta", "0.5"),
    "temperature": ("temperature", "0.3"),
    "top_p": ("top_p", "0.8"),
    "draft_tokens": ("block", "3"),
    "max_tokens": ("max_tokens", "2"),
    "weights": (f"weight-{DELTA}", "-0.5"),
}


@dataclass(frozen=True)
class FrontEnd:
    allowed: Callable[[], set[str]]  # the rows it accepts
    drive: Callable[[World, Spy, Path, dict[str, Any]], None]  # one run with these values set


FRONT_ENDS: dict[str, FrontEnd] = {
    "run flag": FrontEnd(lambda: cli_settings("run"), lambda w, s, f, v: drive_run(w, s, f, flag=v)),
    "run profile": FrontEnd(lambda: profile_settings("run"), lambda w, s, f, v: drive_run(w, s, f, profile=v)),
    "run grid": FrontEnd(lambda: {*GRID_KEYS, "weights"}, lambda w, s, f, v: drive_run(w, s, f, grid=v)),
    "jsonl row": FrontEnd(per_prompt, lambda w, s, f, v: drive_run(w, s, f, row=v)),
    "jsonl row --parallel": FrontEnd(per_prompt, in_parallel(drive_run, "row")),
    "chat flag": FrontEnd(lambda: cli_settings("chat"), lambda w, s, f, v: drive_chat(w, s, f, flag=v)),
    "chat profile": FrontEnd(lambda: profile_settings("chat"), lambda w, s, f, v: drive_chat(w, s, f, profile=v)),
    "app field": FrontEnd(app_settings, lambda w, s, f, v: drive_chat(w, s, f, fields=v)),
    "chat flag + app field": FrontEnd(lambda: cli_settings("chat"), lambda w, s, f, v: flags_then_fields(w, s, f, v)),
    "serve flag": FrontEnd(lambda: cli_settings("serve"), lambda w, s, f, v: drive_serve(w, s, f, flag=v)),
    "serve profile": FrontEnd(lambda: profile_settings("serve"), lambda w, s, f, v: drive_serve(w, s, f, profile=v)),
    "http field": FrontEnd(per_prompt, lambda w, s, f, v: drive_serve(w, s, f, body=v)),
    "http field --parallel": FrontEnd(per_prompt, in_parallel(drive_serve, "body")),
}


def run_front_end(front: str, world: World, folder: Path, values: dict[str, Any]) -> Spy:
    with spying(folder) as spy:
        FRONT_ENDS[front].drive(world, spy, folder, values)
    return spy


def received(name: str, spy: Spy, world: World, values: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(what the engine got, what it should have got) for every generation of the run."""
    row = ROWS[name]
    assert spy.loads and spy.calls, "the front end neither loaded an engine nor generated"
    return [(row.received(spy, call), (row.expected or (lambda *_: values[name]))(world, call, values)) for call in spy.calls]


def cases() -> list[tuple[str, str]]:
    return [(name, front) for front, fe in FRONT_ENDS.items() for name in ROWS if name in fe.allowed()]


@pytest.fixture(scope="module")
def all_at_once(world, tmp_path_factory) -> Callable[[str], tuple[Spy, dict[str, Any]]]:
    """One run per front end with every setting it accepts set at once (cached for the module)."""
    runs: dict[str, tuple[Spy | BaseException, dict[str, Any]]] = {}

    def run(front: str) -> tuple[Spy, dict[str, Any]]:
        if front not in runs:
            values = {name: ROWS[name].value for name in ROWS if name in FRONT_ENDS[front].allowed()}
            try:
                runs[front] = run_front_end(front, world, tmp_path_factory.mktemp("all"), values), values
            except BaseException as e:  # noqa: BLE001 - every case of this front end reports it
                runs[front] = e, values
        spy, values = runs[front]
        if isinstance(spy, BaseException):
            raise spy
        return spy, values

    return run


# -- the tests --------------------------------------------------------------------------------------
def test_every_setting_has_a_row():
    # (request fields — logprobs, echo, … — shape what an answer reports: tests/server/test_logprobs.py)
    missing = [name for name in SETTINGS if name not in ROWS and name not in REQUEST_KEYS]
    assert not missing, f"no front end tested for setting {', '.join(missing)}: add a row to ROWS"
    untested = [name for name in ROWS if not any(name in fe.allowed() for fe in FRONT_ENDS.values())]
    assert not untested, f"no front end tested for setting {', '.join(untested)}"
    assert set(ROWS) - set(SETTINGS) == set(MIX)


@pytest.mark.parametrize("name", [n for n in ROWS if n in SETTINGS])
def test_row_values_are_not_the_defaults(name):
    value = ROWS[name].value
    assert value != SETTINGS[name].default and value != SPEED.get(name)
    assert SETTINGS[name].check(json_value(value)) == value


def test_row_values_change_the_prompt(world):
    default = world.expected_prompt()
    assert world.expected_prompt(prompt_style=ROWS["prompt_style"].value) != default
    assert world.expected_prompt(system_prompt=ROWS["system_prompt"].value) != default


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_control_run_differs(front, world, tmp_path):
    """With nothing set, no row's check passes: each check can see its own setting arrive."""
    spy = run_front_end(front, world, tmp_path, {})
    values = {name: row.value for name, row in ROWS.items()}
    accepted = FRONT_ENDS[front].allowed()
    passing = [n for n in ROWS if n in accepted and all(got == want for got, want in received(n, spy, world, values))]
    assert not passing, f"{front}: these checks pass without their setting: {passing}"


@pytest.mark.parametrize("name,front", cases())
def test_setting_reaches_the_engine(name, front, world, all_at_once):
    spy, values = all_at_once(front)
    for got, want in received(name, spy, world, values):
        assert got == want, f"{front} dropped {name}: the engine got {got!r}, not {want!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name,front", cases())
def test_setting_alone_reaches_the_engine(name, front, world, tmp_path):
    """The same, one setting at a time: no other setting can carry it through."""
    values = {name: ROWS[name].value}
    spy = run_front_end(front, world, tmp_path, values)
    for got, want in received(name, spy, world, values):
        assert got == want, f"{front} dropped {name}: the engine got {got!r}, not {want!r}"


def test_jsonl_row_refuses_settings_fixed_for_the_run(world, tmp_path):
    """A row that sets a run-wide setting becomes an error row naming it (never silently ignored)."""
    fixed = [name for name, st in SETTINGS.items() if not st.per_prompt and name not in REQUEST_KEYS]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": PROMPT, name: json_value(ROWS[name].value)}) + "\n" for name in fixed))
    out = tmp_path / "out.jsonl"
    with spying(tmp_path):
        rc = main(["run", "--prompt-file", str(prompts), "--output", str(out), *command_line(world, tmp_path, {}, {})])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 1 and len(rows) == len(fixed)
    for name, row in zip(fixed, rows):
        assert row["finish_reason"] == "error" and name in row["error"] and SETTINGS[name].cli_flag in row["error"], row


@pytest.mark.parametrize("name", ["prompt_style", "system_prompt"])
def test_run_raw_refuses_template_settings(name, world, tmp_path, capsys):
    """``--raw`` skips every template: a flag that only shapes the template is refused, not ignored."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    args = ["run", "--raw", "--prompt-file", str(prompts), "--output", str(tmp_path / "out.jsonl")]
    with spying(tmp_path) as spy:
        rc = main([*args, *command_line(world, tmp_path, {name: ROWS[name].value}, {})])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not spy.loads and len(err.splitlines()) == 1
    assert SETTINGS[name].cli_flag in err and "--raw" in err


def test_http_request_refuses_settings_fixed_for_the_server(world, tmp_path):
    """A request field naming a run-wide setting is a 400 naming its flag (never silently ignored)."""
    fixed = [name for name, st in SETTINGS.items() if not st.per_prompt and name not in REQUEST_KEYS]
    answers = {}

    def serve(server, sockets=None) -> None:
        with TestClient(server.config.app, base_url="http://127.0.0.1") as client:
            for name in fixed:
                body = {"messages": [{"role": "user", "content": PROMPT}], name: json_value(ROWS[name].value)}
                answers[name] = client.post("/v1/chat/completions", json=body)

    with spying(tmp_path) as spy, pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn.Server, "run", serve)
        assert main(["serve", "--host", "127.0.0.1", "--port", "0", *command_line(world, tmp_path, {}, {})]) == 0
    assert not spy.calls
    for name, answer in answers.items():
        error = answer.json()["error"]
        assert answer.status_code == 400 and error["param"] == name and SETTINGS[name].cli_flag in error["message"], error
