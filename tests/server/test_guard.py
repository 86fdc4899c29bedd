"""The Host and Origin checks and the API key (server/guard.py): a web page cannot drive the server."""

from __future__ import annotations

import argparse
import json
import re
import socket
import time

import httpx
import pytest

from eft_local.cli import build_parser
from eft_local.cli.serve import access, api_key
from eft_local.errors import UserError
from eft_local.server.guard import access_policy, check_host_option, check_origin_option
from tests.conftest import role_args, run_cli
from tests.server.conftest import HELLO


# -- 1: a web page cannot drive it ------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8080", "127.0.0.1.nip.io", "localhost.evil.com", "[::1"])
def test_a_host_that_does_not_name_this_server_is_refused(serve, host):
    srv = serve()
    for r in (
        httpx.post(srv.url + "/v1/chat/completions", json=HELLO, headers={"Host": host}),
        httpx.get(srv.url + "/v1/models", headers={"Host": host}),
    ):
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed", r.text


def test_names_of_this_server_and_allowed_hosts_are_accepted(serve):
    srv = serve(allowed_hosts=["my.box"])
    port = srv.port
    for host in [
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        "127.0.0.2",
        f"[::1]:{port}",
        "api.localhost",
        "ip6-localhost",
        "MY.BOX:8080",
        "my.box.",
    ]:
        r = httpx.post(srv.url + "/v1/chat/completions", json=HELLO, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    assert httpx.get(srv.url + "/health", headers={"Host": "other.box"}).status_code == 403
    anyhost = serve(allowed_hosts=["*"])
    assert httpx.get(anyhost.url + "/health", headers={"Host": "other.box"}).status_code == 200


def test_bound_to_every_interface_any_ip_and_the_host_name_are_accepted():
    policy = access_policy("0.0.0.0")
    assert policy.host_allowed("192.168.1.5:8080") and policy.host_allowed("[fe80::1]:80")
    assert policy.host_allowed(socket.gethostname()) and not policy.host_allowed("evil.example.com")
    assert access_policy("192.168.1.5").host_allowed("192.168.1.5") and not access_policy("127.0.0.1").host_allowed("10.0.0.1")


def test_the_host_check_and_serve_share_one_loopback_rule():
    """A name ``serve`` treats as loopback (no key needed, no warning) is a Host the server accepts."""
    from eft_local.cli.serve import is_loopback

    policy = access_policy("127.0.0.1")
    for name in [
        "localhost",
        "ip6-localhost",
        "ip6-loopback",
        "a.localhost",
        "127.0.0.2",
        "::1",
        "0.0.0.0",
        "10.0.0.1",
        "evil.com",
    ]:
        assert policy.host_allowed(name if ":" not in name else f"[{name}]") == is_loopback(name), name


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_cross_origin_simple_request_is_refused(serve, content_type):
    srv = serve()
    body = json.dumps(HELLO)
    for headers in ({"Origin": "http://evil.example", "Content-Type": content_type}, {"Origin": "http://evil.example"}):
        r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert httpx.get(srv.url + "/v1/models", headers={"Origin": "null"}).status_code == 403
    r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(srv.url + "/v1/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 400  # (through the guard: a chat body has no prompt)


def test_allowed_origins_get_cors_and_others_do_not(serve):
    srv = serve(allow_origins=["http://app.example:3000"])
    pre = httpx.options(
        srv.url + "/v1/chat/completions",
        headers={
            "Origin": "http://app.example:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://app.example:3000"
    assert (
        "POST" in pre.headers["access-control-allow-methods"] and "authorization" in pre.headers["access-control-allow-headers"]
    )
    r = httpx.post(srv.url + "/v1/chat/completions", json=HELLO, headers={"Origin": "http://app.example:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
    other = httpx.options(
        srv.url + "/v1/chat/completions", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    plain = httpx.post(srv.url + "/v1/chat/completions", json=HELLO)  # no Origin: no CORS headers
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_bad_allow_origin_is_a_start_up_error(family):
    p = family.paths()
    r = run_cli("serve", "--base", str(p["base"]), "--chat", str(p["chat"]), "--reference", str(p["reference"]),
                "--allow-origin", "evil.example/path")  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--allow-origin" in r.stderr


# -- 2: an empty key is an error; keys from a file or the environment ---------------------------------
def key_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})


@pytest.mark.parametrize("flags, env", [(["--api-key", ""], {}), (["--api-key", "  "], {}), ([], {"EFT_LOCAL_API_KEY": ""})])
def test_an_empty_api_key_is_a_start_up_error(family, flags, env):
    p = family.paths()
    start = time.monotonic()
    r = run_cli("serve", "--base", str(p["base"]), "--chat", str(p["chat"]), "--reference", str(p["reference"]), *flags, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty" in r.stderr, r.stderr
    assert time.monotonic() - start < 20  # before any model loads


def test_api_key_sources(tmp_path):
    f = tmp_path / "key"
    f.write_text("s3cret\n")
    assert api_key(key_args(api_key_file=str(f)), {}) == "s3cret"
    assert api_key(key_args(), {"EFT_LOCAL_API_KEY": "from-env"}) == "from-env"
    assert api_key(key_args(api_key="flag"), {"EFT_LOCAL_API_KEY": "from-env"}) == "flag"
    assert api_key(key_args(), {}) is None
    f.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        api_key(key_args(api_key_file=str(f)), {})
    for bad in ("two words", "tab\tkey", "ключ"):
        with pytest.raises(UserError, match="printable ASCII"):
            api_key(key_args(api_key=bad), {})
    with pytest.raises(UserError, match="cannot read"):
        api_key(key_args(api_key_file=str(tmp_path / "absent")), {})


# -- issue 23 item 6: flag values that look valid but could never match are refused at start ---------------------
REFUSED = [
    ("--allowed-host", "evil.com:8080", "without a port"),
    ("--allowed-host", "[::1]:8080", "without a port"),
    ("--allowed-host", "*.example.com", "patterns are not supported"),
    ("--allowed-host", "http://my.box", "not a URL"),
    ("--allowed-host", "my.box/x", "not a URL"),
    ("--allowed-host", "two words", "host name or address"),
    ("--allow-origin", "http://*.example.com", "not patterns"),
    ("--allow-origin", "*.example.com", "not patterns"),
    ("--allow-origin", "null", "any web page"),
    ("--allow-origin", "NULL", "any web page"),
    ("--allow-origin", "http://a.example:port", "scheme://host[:port]"),
    ("--allow-origin", "http://a.example/app", "scheme://host[:port]"),
]


@pytest.mark.parametrize("flag, value, says", REFUSED)
def test_host_and_origin_values_that_could_never_match_are_refused_naming_the_flag(flag, value, says):
    args = build_parser().parse_args(["serve", "--base", "b.gguf", "--chat", "c.gguf", "--reference", "r.gguf", flag, value])
    with pytest.raises(UserError, match=re.escape(flag)) as e:
        access(args)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "flag, value", [("--allowed-host", "evil.com:8080"), ("--allow-origin", "http://*.example.com"), ("--allow-origin", "null")]
)
def test_the_issue_examples_exit_2_with_one_line(family, flag, value):
    r = run_cli("serve", *role_args(family), "--port", "0", flag, value, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and flag in r.stderr, r.stderr


@pytest.mark.parametrize(
    "value, kept", [("my.box", "my.box"), ("MY.Box.", "my.box"), ("192.168.1.5", "192.168.1.5"), ("[::1]", "::1"), ("*", "*")]
)
def test_allowed_host_forms_that_match_are_kept(value, kept):
    assert check_host_option(value) == kept


def test_an_allowed_host_matches_on_any_port_and_origins_match_exactly(serve):
    srv = serve(allowed_hosts=[check_host_option("my.box")], allow_origins=[check_origin_option("http://app.example:3000")])
    for host in ("my.box", "my.box:8080", "MY.BOX:1"):
        assert httpx.get(srv.url + "/v1/models", headers={"Host": host}).status_code == 200, host
    for origin in ("http://app.example:3001", "http://x.app.example:3000", "null"):
        assert httpx.get(srv.url + "/v1/models", headers={"Origin": origin}).status_code == 403, origin
