"""Text that isn't valid Unicode (issue 23 item 9, the server's part): a lone surrogate in any
field of any endpoint is a JSON 400 naming the field; a chat template whose output isn't Unicode
is a 400 naming the template; `serve --model-name/--system/...` with bytes that aren't UTF-8
exit 2 with one line before anything loads. Before: a 500 (or a plain-text one with a traceback
for /tokenize), and a bad --model-name made every /health a 500."""

from __future__ import annotations

import json

import httpx
import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.llama.synthetic import CHATML_TEMPLATE, write_family
from tests.conftest import role_args, run_cli
from tests.server.conftest import GuardedServer

BAD_ON_DEMAND = "{% if messages[-1]['content'] == 'BAD' %}{{ 'x\\ud800' }}{% endif %}" + CHATML_TEMPLATE
MSG = {"role": "user", "content": "hi"}
LONE = "\\ud800"  # as it travels in JSON


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    family = write_family(tmp_path_factory.mktemp("bad-template"), chat_template=BAD_ON_DEMAND)
    session = Session(EftEngine.load(family.paths(), n_ctx=512, n_threads=1))
    srv = GuardedServer(session)
    yield srv
    srv.stop()
    session.close()


def post(srv, path: str, text: str) -> httpx.Response:
    """``text``: the JSON body as sent (so escapes such as \\ud800 reach the server as they are)."""
    return httpx.post(srv.url + path, content=text.encode(), headers={"content-type": "application/json"}, timeout=30)


CASES = [  # (path, body, the field the 400 names)
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a{LONE}"}}]}}', "messages[0].content"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user{LONE}", "content": "a"}}]}}', "messages[0].role"),
    (
        "/v1/chat/completions",
        f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "{LONE}"}}]}}]}}',
        "messages[0].content[0].text",
    ),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a", "name": "{LONE}"}}]}}', "messages[0].name"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a"}}], "model": "m{LONE}"}}', "model"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a"}}], "stop": ["ok", "{LONE}"]}}', "stop[1]"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a"}}], "user": "{LONE}"}}', "user"),
    (
        "/v1/chat/completions",
        f'{{"messages": [{{"role": "user", "content": "a"}}], "weights": {{"d{LONE}": 1}}}}',
        "weights.d\\ud800",
    ),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "a"}}], "top_p_mode": "{LONE}"}}', "top_p_mode"),
    ("/v1/completions", f'{{"prompt": "{LONE}", "max_tokens": 2}}', "prompt"),
    ("/v1/completions", f'{{"prompt": ["ok", "b{LONE}"], "max_tokens": 2}}', "prompt[1]"),
    ("/v1/completions", f'{{"prompt": "ok", "max_tokens": 2, "stop": "{LONE}"}}', "stop"),
    ("/tokenize", f'{{"prompt": "{LONE}"}}', "prompt"),
    ("/tokenize", f'{{"messages": [{{"role": "user", "content": "{LONE}"}}]}}', "messages[0].content"),
    ("/detokenize", f'{{"tokens": [1], "x{LONE}": 1}}', "x\\ud800"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_a_lone_surrogate_in_any_field_is_a_400_naming_it(served, path, body, param):
    json.loads(body)  # (the body itself is valid JSON)
    r = post(served, path, body)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
    err = r.json()["error"]
    assert err["param"] == param and "is not valid Unicode: a lone surrogate U+D800" in err["message"], err
    assert post(served, "/v1/completions", '{"prompt": "ok", "max_tokens": 2}').status_code == 200


def test_invalid_utf8_bytes_in_a_body_are_a_400(served):
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
        r = httpx.post(served.url + path, content=b'{"prompt": "a\xff\xfe"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


def test_a_template_whose_output_is_not_unicode_is_a_400_naming_it(served):
    bad = {"messages": [{"role": "user", "content": "BAD"}], "max_tokens": 2}
    for stream in (False, True):
        r = httpx.post(served.url + "/v1/chat/completions", json={**bad, "stream": stream}, timeout=30)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert message.startswith("chat template of chat.gguf failed: its output is not valid Unicode"), message
    r = httpx.post(served.url + "/tokenize", json={"messages": bad["messages"]}, timeout=30)
    assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]["message"], r.text
    assert httpx.post(served.url + "/v1/chat/completions", json={"messages": [MSG], "max_tokens": 2}).status_code == 200


BYTE = b"\xff".decode("utf-8", "surrogateescape")  # how Python sees a byte that isn't UTF-8 in argv


FLAGS = [
    ["--model-name", f"bad{BYTE}"],
    ["--system", BYTE],
    ["--stop", f"x{BYTE}"],
    ["--allowed-host", f"h{BYTE}.example"],
    ["--allow-origin", f"http://a{BYTE}.example"],
    ["--variant", f"v{BYTE}:alpha=1"],
    ["--host", f"127.0.0.{BYTE}"],
]


@pytest.mark.parametrize("flags", FLAGS, ids=[f[0] for f in FLAGS])
def test_serve_flags_that_are_not_unicode_are_refused_before_anything_loads(flags):
    from eft_local.cli import build_parser
    from eft_local.cli.options import prepare
    from eft_local.cli.serve import _check_flags
    from eft_local.errors import UserError

    args = build_parser().parse_args(["serve", "--base", "b.gguf", "--chat", "c.gguf", "--reference", "r.gguf", *flags])
    with pytest.raises(UserError, match="is not valid Unicode") as e:
        _check_flags(args)
        prepare(args)  # (--system and --stop: the settings' own check)
    assert flags[0] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags", [FLAGS[0], FLAGS[1]], ids=["--model-name", "--system"])
def test_the_issue_examples_exit_2_with_one_line(family, flags):
    r = run_cli("serve", *role_args(family), "--port", "0", *flags, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "is not valid Unicode" in lines[0], r.stderr
    assert flags[0] in lines[0] and "Traceback" not in r.stderr
