"""Bounded heads, timeouts and connections (server/connections.py); a half-closed client gets its answer."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from eft_local.cli.serve import bind
from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.server.app import ServerOptions, create_app
from eft_local.server.connections import ConnectionLimits, guarded_protocol
from eft_local.server.guard import Guard, access_policy
from tests.conftest import server_settings

QUICK = ConnectionLimits(head_seconds=0.6, body_seconds=0.6, keep_alive_seconds=0.6, max_connections=40)


HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


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


MODEL = "synthetic-eft"


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


# -- 7: a half-closed client gets its answer -----------------------------------------------------------------------
def test_a_client_that_half_closes_after_its_request_gets_the_answer(serve):
    srv = serve()
    r = raw(srv.port, post_bytes("/v1/chat/completions", {**HELLO, "max_tokens": 8}), half_close=True)
    assert status_of(r) == 200 and json.loads(r.split(b"\r\n\r\n", 1)[1])["usage"]["completion_tokens"] > 0
    s = raw(srv.port, post_bytes("/v1/completions", {"prompt": "hi", "max_tokens": 8, "stream": True}), half_close=True)
    assert status_of(s) == 200 and s.rstrip().endswith(b"0") and b"data: [DONE]" in s
    h = raw(srv.port, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n", half_close=True)
    assert status_of(h) == 200
