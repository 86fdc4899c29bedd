"""Chat templates are code from the internet: every render is bounded in time, size and memory
(issue 15 item 8), in every front end, and never blocks Ctrl+C or the server's engine."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from eft_local.errors import UserError
from eft_local.llama import template_sandbox
from eft_local.llama.prompts import render_chat
from eft_local.llama.synthetic import CHATML_TEMPLATE, write_family
from tests.conftest import run_cli

SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"  # no output, ~forever
SPIN_MACRO = "{% macro f(n) %}{% for i in range(100000) %}{% endfor %}{{ f(n) if n < 0 else '' }}{% endmacro %}" + (
    "{% for i in range(100000) %}{{ f(i) }}{% endfor %}"
)
HUGE_FILTERS = ["{{ 'x'|center(2000000000) }}", "{{ 'x\\ny'|indent(2000000000) }}", "{{ '%2000000000s'|format('x') }}"]
HELLO = [{"role": "user", "content": "hi"}]
# A template that misbehaves only for the message "SPIN" (so one server can serve both kinds).
SPIN_ON_DEMAND = "{% if messages[-1]['content'] == 'SPIN' %}" + SPIN + "{% endif %}" + CHATML_TEMPLATE


def model(template: str, path: str = "/secret/dir/m.gguf") -> SimpleNamespace:
    return SimpleNamespace(path=path, chat_template=template, bos=-1, eos=-1, add_bos=False, token_text=lambda i: b"")


@pytest.fixture
def short_bound(monkeypatch):
    monkeypatch.setattr(template_sandbox, "RENDER_SECONDS", 1.0)


@pytest.mark.parametrize("template", [SPIN, SPIN_MACRO])
def test_a_template_that_loops_without_output_is_stopped(short_bound, template):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"chat template of m\.gguf failed: took longer than 1 s") as e:
        render_chat(model(template), HELLO)
    assert time.monotonic() - start < 3.0
    assert "/secret" not in str(e.value)  # the file's name, never its directory
    assert render_chat(model(CHATML_TEMPLATE), HELLO).startswith("<|im_start|>user\nhi")  # a fresh renderer answers


@pytest.mark.parametrize("template", HUGE_FILTERS)
def test_a_template_that_builds_a_huge_string_in_one_call_is_refused(template):
    with pytest.raises(UserError, match=r"chat template of m\.gguf failed: .*(memory|characters)"):
        render_chat(model(template), HELLO)
    assert render_chat(model(CHATML_TEMPLATE), HELLO).endswith("<|im_start|>assistant\n")


def test_template_errors_and_values_survive_the_round_trip():
    with pytest.raises(UserError, match="only user and assistant"):
        render_chat(model("{{ raise_exception('only user and assistant') }}"), HELLO)
    odd = [{"role": "user", "content": "\u2028, \x00 and emoji \U0001f600"}]
    assert render_chat(model("{{ messages[0]['content'] }}"), odd) == odd[0]["content"]
    with pytest.raises(UserError, match="not valid Unicode"):  # a lone surrogate survives the trip, then is refused
        render_chat(model("{{ messages[0]['content'] }}"), [{"role": "user", "content": "\ud800"}])


def test_ctrl_c_interrupts_a_render_at_once(short_bound, monkeypatch):
    monkeypatch.setattr(template_sandbox, "RENDER_SECONDS", 30.0)

    class Interrupted(Exception):
        pass

    def on_sigint(*_):
        raise Interrupted

    old = signal.signal(signal.SIGINT, on_sigint)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))  # as a terminal sends it
    try:
        start = time.monotonic()
        timer.start()
        with pytest.raises(Interrupted):
            render_chat(model(SPIN), HELLO)
        assert time.monotonic() - start < 2.0
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert render_chat(model(CHATML_TEMPLATE), HELLO).startswith("<|im_start|>")


# -- the front ends -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spinning_family(tmp_path_factory):
    return write_family(tmp_path_factory.mktemp("spinning"), chat_template=SPIN_ON_DEMAND)


def test_run_turns_a_looping_template_into_an_error_row(spinning_family, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "SPIN"}\n{"id": "b", "prompt": "hello"}\n')
    f = spinning_family
    start = time.monotonic()
    r = run_cli(
        "run", "--prompt-file", str(prompts), "--base", str(f.base), "--chat", str(f.chat), "--reference", str(f.reference),
        "--threads", "1", "--max-tokens", "3", "--temperature", "0", timeout=120,
    )  # fmt: skip
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert "Traceback" not in r.stderr and time.monotonic() - start < 60
    assert rows[0]["finish_reason"] == "error" and "chat template of chat.gguf failed: took longer" in rows[0]["error"]
    assert rows[1]["finish_reason"] in ("stop", "length")


def test_serve_answers_400_and_a_spinning_template_never_holds_up_the_engine(spinning_family, short_bound, monkeypatch):
    from eft_local.engine.decoder import EftEngine
    from eft_local.engine.session import Session
    from eft_local.server.app import ServerOptions, create_app
    from tests.conftest import ServerThread, server_settings

    rendered_on: list[str] = []  # the threads templates render on: the event, where a stopwatch flaked under load
    render = template_sandbox.render
    monkeypatch.setattr(
        template_sandbox, "render", lambda *a, **k: rendered_on.append(threading.current_thread().name) or render(*a, **k)
    )
    template_sandbox.warm()
    engine = EftEngine.load(spinning_family.paths(), n_ctx=1024, n_threads=1)
    session = Session(engine)
    srv = ServerThread(create_app(session, ServerOptions(model_name="m", settings=server_settings(max_tokens=3))))
    try:
        arrivals: list[float] = []
        first = threading.Event()

        def stream() -> None:  # a long answer, generating while the template spins
            body = {"prompt": "a long story", "max_tokens": 900, "stream": True, "temperature": 0}
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.monotonic())
                        first.set()

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert first.wait(30)
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "SPIN"}]}, timeout=30)
        t1 = time.monotonic()
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "chat template of chat.gguf failed: took longer" in err["message"] and "/" not in err["message"]
        assert httpx.get(srv.url + "/health", timeout=2).status_code == 200
        streamer.join(60)
        during = [t for t in arrivals if t0 <= t <= t1]
        gaps = [b - a for a, b in zip(during, during[1:])]
        assert len(during) > 5 and max(gaps) < 0.5, (len(during), max(gaps or [0]))  # the stream kept flowing
        assert rendered_on and "eft-engine" not in rendered_on, rendered_on  # it rendered off the engine's thread
        ok = httpx.post(srv.url + "/v1/chat/completions", json={"messages": HELLO}, timeout=30)
        assert ok.status_code == 200
    finally:
        srv.stop()
        session.close()


async def test_the_chat_app_shows_a_notice_and_goes_on(spinning_family, short_bound, monkeypatch, tmp_path):
    from eft_local.tui.app import EftChatApp

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    notices: list[str] = []
    app = EftChatApp(paths=spinning_family.paths(), n_ctx=512, max_tokens=4, seed=1, n_threads=1)
    real_notify = app.notify
    monkeypatch.setattr(app, "notify", lambda message, **kw: (notices.append(str(message)), real_notify(message, **kw)))
    async with app.run_test(size=(110, 36)) as pilot:
        end = time.monotonic() + 30
        while app.engine is None and not app.load_error:
            assert time.monotonic() < end
            await pilot.pause(0.05)
        for text in ("SPIN", "hello"):
            await pilot.press(*text, "enter")
            end = time.monotonic() + 15
            await pilot.pause(0.1)
            while app.generating:
                assert time.monotonic() < end, "the app stayed busy"
                await pilot.pause(0.05)
        assert any("chat template of chat.gguf failed: took longer" in n for n in notices), notices
        assert app.conv.turns[-1].role == "assistant" and app.conv.turns[-1].content  # the next answer came


def test_no_renderer_outlives_a_killed_parent_mid_render():
    import subprocess
    import sys

    code = (
        "from eft_local.llama import template_sandbox as ts\n"
        "ts.RENDER_SECONDS = 1.0\n"
        "ts.warm(); print(ts._renderer._proc.pid, flush=True)\n"
        f"ts.render({SPIN!r}, [], add_generation_prompt=True, bos_token='', eos_token='')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    time.sleep(0.3)  # mid-render
    parent.kill()
    parent.wait()

    def running() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False

    end = time.monotonic() + 8
    while running():
        assert time.monotonic() < end, "the template renderer kept spinning after its parent died"
        time.sleep(0.1)


# -- chat templates that render enormous prompts --------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ 1000 * ['x'] * 10000000 }}",
        "{{ 2 ** 100000000 }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ],
)
def test_enormous_template_output_is_refused(template):
    model = SimpleNamespace(path="m.gguf", chat_template=template, bos=-1, eos=-1, add_bos=False, token_text=lambda i: b"")
    with pytest.raises(UserError, match="chat template of m.gguf"):
        render_chat(model, [{"role": "user", "content": "hi"}])


def test_normal_template_with_a_long_message_still_renders():
    model = SimpleNamespace(
        path="m.gguf",
        chat_template="{% for m in messages %}[{{ m.content }}]{% endfor %}",
        bos=-1,
        eos=-1,
        add_bos=False,
        token_text=lambda i: b"",
    )
    text = "y" * 3_000_000
    assert render_chat(model, [{"role": "user", "content": text}]) == f"[{text}]"


@pytest.mark.parametrize("template", ['{{ "\\ud800" }}', '{{ "ok" ~ "\\udcff" }}', "{{ messages[0].content ~ '\\udfff' }}"])
def test_a_template_whose_output_is_not_unicode_is_refused_in_one_line(template):
    model = SimpleNamespace(path="/d/m.gguf", chat_template=template, bos=-1, eos=-1, add_bos=False, token_text=lambda i: b"")
    with pytest.raises(UserError, match=r"^chat template of m.gguf failed: its output is not valid Unicode: "):
        render_chat(model, HELLO)
