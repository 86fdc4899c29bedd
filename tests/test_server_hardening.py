"""`eft-local serve` against a careless user and a hostile web page (issue 15 items 1-7).

The server runs as `serve` runs it: the app behind ``guard.Guard`` on uvicorn with
``connections.guarded_protocol``, on 127.0.0.1; raw sockets for what HTTP clients won't send."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from eft_local.cli.serve import api_key, bind
from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.errors import UserError
from eft_local.server.app import ServerOptions, create_app
from eft_local.server.connections import ConnectionLimits, guarded_protocol
from eft_local.server.guard import Guard, access_policy
from eft_local.server.redact import scrub
from eft_local.server.request import ApiError, parse

from .conftest import run_cli
from .test_server import server_settings

MODEL = "synthetic-eft"
QUICK = ConnectionLimits(head_seconds=0.6, body_seconds=0.6, keep_alive_seconds=0.6, max_connections=40)
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


class GuardedServer:
    """The app as `serve` runs it (Guard + guarded protocol), from a thread, on 127.0.0.1."""

    def __init__(
        self, session, *, limits: ConnectionLimits | None = None, allowed_hosts=(), allow_origins=(), api_key=None
    ) -> None:
        self.app = create_app(session, ServerOptions(model_name=MODEL, settings=server_settings(), api_key=api_key))
        policy = access_policy("127.0.0.1", allowed_hosts, allow_origins)
        limits = limits or ConnectionLimits()
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            Guard(self.app, policy),
            http=guarded_protocol(limits),
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=int(limits.keep_alive_seconds),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < end, "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def session(family):
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    s = Session(engine)
    yield s
    s.close()


@pytest.fixture
def serve(session):
    servers = []

    def start(**kw) -> GuardedServer:
        servers.append(GuardedServer(session, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def raw(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Send ``data``, optionally shut the sending side, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def post_bytes(path: str, body: dict, extra: str = "", content_type: str = "application/json") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


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


# -- 3: bounded heads, timeouts, a connection cap ------------------------------------------------------------
@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n",  # one 4 MiB header
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 60) for i in range(2000))
        + b"\r\n",
        b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a huge request line
    ],
)
def test_an_oversized_request_head_is_431(serve, head):
    srv = serve()
    try:
        r = raw(srv.port, head)
    except (ConnectionResetError, BrokenPipeError):  # closed while we were still sending: also refused
        r = b"HTTP/1.1 431 "
    assert status_of(r) == 431
    assert httpx.get(srv.url + "/health").status_code == 200


def test_unfinished_requests_and_idle_connections_time_out(serve):
    srv = serve(limits=QUICK)
    start = time.monotonic()
    assert raw(srv.port, b"") == b""  # silent: closed
    assert status_of(raw(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")) == 408
    r = raw(srv.port, post_bytes("/v1/chat/completions", HELLO)[:-5])  # the body never ends
    assert status_of(r) == 408 and b"request_timeout" in r
    assert time.monotonic() - start < 6
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:  # keep-alive, then idle
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got, t0 = b"", time.monotonic()
        while chunk := s.recv(65536):
            got += chunk
        assert status_of(got) == 200 and time.monotonic() - t0 < 3


def test_a_slow_head_can_not_last_by_dripping_bytes(serve):
    srv = serve(limits=QUICK)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        t0 = time.monotonic()
        try:
            for _ in range(20):
                s.sendall(b"X: y\r\n")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(3)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        assert time.monotonic() - t0 < 2.5 and (data == b"" or status_of(data) == 408)


@pytest.mark.parametrize("flood", [b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: "])
def test_legitimate_clients_are_served_under_a_flood_of_unfinished_requests(serve, flood):
    srv = serve(limits=ConnectionLimits(max_connections=40, head_seconds=30))
    socks = []
    try:
        for _ in range(150):  # far beyond the cap, none ever finishes
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(flood)
            socks.append(s)
        for _ in range(3):
            t0 = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
            assert httpx.post(srv.url + "/v1/chat/completions", json=HELLO, timeout=30).status_code == 200
            assert time.monotonic() - t0 < 5
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        assert alive <= 40
    finally:
        for s in socks:
            s.close()


# -- 5: JSON values of unexpected types are 400 naming the field ---------------------------------------------
VALUES = [None, True, 0, -1, 10**400, 1.5, 1e308, "x", "", [], [1], ["a"], [[1]], {}, {"a": 1}, {"role": "user"}]


def test_a_role_that_is_a_list_or_an_object_is_400_naming_it(serve):
    srv = serve()
    for role in (["user"], {"a": 1}, 5, None, True):
        body = {"messages": [{"role": "user", "content": "hi"}, {"role": role, "content": "x"}]}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].role", r.text


def test_every_field_of_every_json_type_is_a_400_or_accepted_never_a_crash():
    settings = server_settings()
    fields = ["model", "messages", "prompt", "stream", "stream_options", "n", "stop", "weights", "seed", "max_tokens",
              "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "top_p_mode", "alpha",
              "beta", "draft_tokens", "logprobs", "top_logprobs", "echo", "user"]  # fmt: skip
    bodies = []
    for v in VALUES:
        bodies += [("chat", {"messages": [{"role": "user", "content": "hi"}], f: v}) for f in fields]
        bodies += [("completion", {"prompt": "hi", f: v}) for f in fields]
        msg = {"role": "user", "content": "hi"}
        bodies += [("chat", {"messages": [{**msg, k: v}]}) for k in ("role", "content", "name")]
        bodies += [("chat", {"messages": [v]}), ("chat", {"messages": [{**msg, "content": [{"type": "text", "text": v}]}]})]
        bodies += [
            ("chat", {"messages": [{**msg, "content": [{"type": v, "text": "x"}]}]}),
            ("chat", {"messages": [{**msg, "content": [v]}]}),
        ]
        bodies += [
            ("chat", {"messages": [msg], "stream_options": {"include_usage": v}}),
            ("chat", {"messages": [msg], "stop": [v]}),
        ]
        bodies += [("chat", {"messages": [msg], "weights": {"chat": v}}), ("chat", {"messages": [msg], "weights": {"nope": v}})]
    for kind, body in bodies:
        try:
            parse(kind, body, settings, n_ctx=512)
        except ApiError as e:
            assert e.status in (400, 413) and (e.param is None or isinstance(e.param, str)), e.message


# -- 6: no paths of this machine in anything a client gets ------------------------------------------------------
def test_error_messages_carry_file_names_not_paths(serve, session, family, monkeypatch):
    srv = serve()
    chat_path = str(family.paths()["chat"])
    assert os.path.isabs(chat_path)

    def broken_prompt(**_):
        raise RuntimeError(f"could not map {chat_path} (also tried {os.path.dirname(chat_path)}/other dir/x.gguf)")

    monkeypatch.setattr(session, "prompt", broken_prompt)
    for stream in (False, True):
        r = httpx.post(srv.url + "/v1/chat/completions", json={**HELLO, "stream": stream})
        text = r.text
        assert "chat.gguf" in text and os.path.dirname(chat_path) not in text, text
    assert scrub("open('/home/someone/models/q.gguf') failed") == "open('q.gguf') failed"
    assert scrub("see GET /v1/models") == "see GET /v1/models"


# -- 7: a half-closed client gets its answer -----------------------------------------------------------------------
def test_a_client_that_half_closes_after_its_request_gets_the_answer(serve):
    srv = serve()
    r = raw(srv.port, post_bytes("/v1/chat/completions", {**HELLO, "max_tokens": 8}), half_close=True)
    assert status_of(r) == 200 and json.loads(r.split(b"\r\n\r\n", 1)[1])["usage"]["completion_tokens"] > 0
    s = raw(srv.port, post_bytes("/v1/completions", {"prompt": "hi", "max_tokens": 8, "stream": True}), half_close=True)
    assert status_of(s) == 200 and s.rstrip().endswith(b"0") and b"data: [DONE]" in s
    h = raw(srv.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n", half_close=True)
    assert status_of(h) == 200


# -- 4: stopping with requests in flight -------------------------------------------------------------------------------
def start_serve(family, *extra: str, env: dict | None = None, preexec_fn=None) -> tuple[subprocess.Popen, int]:
    p = family.paths()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "serve", "--base", str(p["base"]), "--chat", str(p["chat"]),
         "--reference", str(p["reference"]), "--port", "0", "--threads", "1", "--n-ctx", "1024", "--gpu-layers", "0", *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn,
    )  # fmt: skip
    for line in proc.stderr:
        if "serving" in line:
            return proc, int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
    raise AssertionError("serve did not start")


@pytest.mark.parametrize("sig, parallel", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 2)])
def test_a_signal_with_requests_in_flight_ends_every_answer_cleanly(family, sig, parallel):
    proc, port = start_serve(family, "--parallel", str(parallel), env={"EFT_LOCAL_API_KEY": "k3y"})
    url = f"http://127.0.0.1:{port}/v1/completions"
    auth = {"Authorization": "Bearer k3y"}
    body = {"prompt": "a long story", "max_tokens": 900, "temperature": 0}
    try:
        assert httpx.post(url, json={**body, "max_tokens": 2}).status_code == 401  # the key from the environment
        first_chunk = threading.Event()

        def stream() -> tuple[int, list[str]]:
            with httpx.stream("POST", url, json={**body, "stream": True}, headers=auth, timeout=60) as r:
                lines = []
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"text"' in line:
                        first_chunk.set()
                    if line:
                        lines.append(line)
                return r.status_code, lines

        def blocking() -> httpx.Response:
            return httpx.post(url, json=body, headers=auth, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            running = pool.submit(stream)
            assert first_chunk.wait(30)
            queued = [pool.submit(stream) for _ in range(2)] + [pool.submit(blocking) for _ in range(3)]
            end = time.monotonic() + 30
            while httpx.get(f"http://127.0.0.1:{port}/health").json()["waiting"] < 5 - (parallel - 1):
                assert time.monotonic() < end, "the requests did not reach the queue"
                time.sleep(0.05)
            proc.send_signal(sig)
            status, lines = running.result(30)  # streaming when the signal came: a final error event, then [DONE]
            assert status == 200 and lines[-1] == "data: [DONE]", lines[-3:]
            assert json.loads(lines[-2][len("data: ") :])["error"]["code"] == "server_shutting_down"
            for f in queued:  # still waiting for the engine: 503 (or, generating beside the first, as it)
                r = f.result(30)
                status, text = r if isinstance(r, tuple) else (r.status_code, r.text)
                if status == 200 and isinstance(r, tuple):
                    assert text[-1] == "data: [DONE]" and "server_shutting_down" in text[-2], text[-3:]
                else:
                    assert status == 503 and "server_shutting_down" in "".join(text), text
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
        assert "Traceback" not in rest and "Exception in ASGI" not in rest and "server stopped" in rest, rest
    finally:
        proc.kill()
        proc.wait()


def test_a_flood_beyond_the_file_limit_leaves_the_command_serving(family):
    """1,100 never-finished requests against `serve` under a 1024-descriptor limit."""
    import resource

    proc, port = start_serve(family, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
    socks = []
    try:
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ")
            socks.append(s)
        t0 = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - t0 < 10
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        code = proc.wait(30)
        proc.kill()
    assert code == 0 and "Too many open files" not in rest and "Traceback" not in rest, rest
