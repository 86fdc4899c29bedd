"""Bounded heads, timeouts and connections (server/connections.py); a half-closed client gets its answer."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from eft_local.server.connections import ConnectionLimits
from tests.server.conftest import HELLO, post_bytes, raw, status_of

QUICK = ConnectionLimits(head_seconds=0.6, body_seconds=0.6, keep_alive_seconds=0.6, max_connections=40)


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
