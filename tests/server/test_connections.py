"""Bounded heads, timeouts and connections (server/connections.py); a half-closed client gets its answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from eft_local.engine.decoder import EftEngine
from eft_local.engine.generation import Generation
from eft_local.engine.session import Session
from eft_local.server.connections import ConnectionLimits
from tests.server.conftest import HELLO, GuardedServer, body_of, post_bytes, raw, status_of

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
    """The events, not a stopwatch: each connection is closed by the server (0.6 s limits) well
    before the client's own 10 s socket timeout would end the read (which raises, failing the test)."""
    srv = serve(limits=QUICK)
    assert raw(srv.port, b"") == b""  # silent: closed
    assert status_of(raw(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")) == 408
    r = raw(srv.port, post_bytes("/v1/chat/completions", HELLO)[:-5])  # the body never ends
    assert status_of(r) == 408 and b"request_timeout" in r
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # keep-alive, then idle
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert status_of(got) == 200 and got.count(b"HTTP/1.1") == 1  # answered, then closed when idle


def test_a_slow_head_can_not_last_by_dripping_bytes(serve):
    """The event, not a stopwatch: dripping a header line every 0.1 s for up to 10 s (far past the
    0.6 s head limit) ends with the server closing the connection, not with the drip's end."""
    srv = serve(limits=QUICK)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        closed_by_server = False
        try:
            for _ in range(100):
                s.sendall(b"X: y\r\n")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            closed_by_server = True
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        assert closed_by_server or data, "the drip lasted 10 s"
        assert data == b"" or status_of(data) == 408


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


# -- issue 23 items 1-3: every request of a connection is bounded, and a client that left is gone ----------------
def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def send_until_refused(sock: socket.socket, data: bytes, total: int) -> int:
    """Send ``data`` over and over up to ``total`` bytes; how many went out before the server closed."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(data)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


STREAM = post_bytes("/v1/completions", {"prompt": "a long story", "max_tokens": 400, "stream": True, "temperature": 0})


PIPELINED = [
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ",  # a header that never ends
    b"GET /health?" + b"q" * 1000,  # a request line that never ends
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-H: y\r\n" * 10,  # header lines that never stop
]


@pytest.mark.parametrize("second", PIPELINED, ids=["header", "request-line", "header-lines"])
def test_a_head_pipelined_behind_an_unfinished_answer_is_still_bounded(serve, stalled, second):
    """Item 1: a streamed request, then (its answer unfinished) a head that never ends. Before: the
    32 KiB limit was off while the first answer was unfinished (87 -> 318 MiB for 130 MiB)."""
    srv = serve()
    before = rss_mib()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(STREAM + second)
        filler = b"X-Fill: " + b"z" * 4000 + b"\r\n" if second.endswith(b"\r\n") else b"z" * 4096
        sent = send_until_refused(s, filler, 256 << 20)
    assert sent < 64 << 20, f"{sent >> 20} MiB went into one pipelined head"
    assert rss_mib() - before < 48
    assert httpx.get(srv.url + "/health").status_code == 200


def test_a_pipelined_head_that_never_ends_times_out_while_the_answer_waits(serve, stalled):
    """Item 1: the head timer runs for a pipelined request too: the connection closes (408, or the
    unfinished answer cut) within the head time, not when the answer ends."""
    srv = serve(limits=ConnectionLimits(head_seconds=0.6, max_connections=40))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(STREAM + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ")
        s.settimeout(20)  # (the answer is held for 60 s)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert not stalled.is_set() and b"data: [DONE]" not in got, got[-300:]


def test_pipelined_requests_are_answered_in_order_one_held_at_a_time(serve):
    srv = serve()
    health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    got = raw(srv.port, post_bytes("/v1/completions", {"prompt": "hi", "max_tokens": 3}) + health * 50 + last)
    assert got.count(b"HTTP/1.1 200 OK") == 52 and got.index(b"text_completion") < got.index(b'"status":"ok"')


def test_a_client_that_never_reads_its_answer_is_cut_after_the_write_limit(serve):
    """Item 1: an answer nobody reads must not pin the connection (and its buffers) forever: once the
    send buffer stays full for write_seconds, the connection is aborted."""
    srv = serve(limits=ConnectionLimits(write_seconds=0.5, max_connections=40))
    body = {"prompt": [[5] * 500] * 16, "max_tokens": 0, "echo": True, "logprobs": 20}  # ~3 MB of JSON
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing and buffers little
    s.connect(("127.0.0.1", srv.port))
    try:
        s.sendall(post_bytes("/v1/completions", body))
        end = time.monotonic() + 120
        while srv.worker.completed == 0:
            assert time.monotonic() < end
            time.sleep(0.05)
        time.sleep(2)  # (four times the write limit)
        got = b""
        s.settimeout(10)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        head, _, rest = got.partition(b"\r\n\r\n")
        assert status_of(got) == 200
        with pytest.raises(json.JSONDecodeError):  # cut: never the whole answer
            json.loads(rest)
    finally:
        s.close()


@pytest.mark.parametrize(
    "trailer",
    [
        b"X-Trailer: " + b"t" * 4096,  # a trailer line that never ends
        b"X-T: 1\r\n" * 1000,  # trailer lines that never stop
    ],
    ids=["one-line", "many-lines"],
)
def test_chunked_trailers_count_against_the_head_limit(serve, trailer):
    """Item 2: before, a trailer line that never ended grew the server by 217 MiB in the 60 s body time."""
    srv = serve()
    body = json.dumps(HELLO).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    before = rss_mib()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n" % (len(body), body))
        sent = send_until_refused(s, trailer, 256 << 20)
    assert sent < 64 << 20 and rss_mib() - before < 48
    assert httpx.get(srv.url + "/health").status_code == 200


@pytest.mark.parametrize(
    "framing",
    [b"1;ext=" + b"e" * 4096, b"0" * 4096, b"1;a=b" * 1000],
    ids=["long-extension", "long-size-line", "many-extensions"],
)
def test_a_chunk_size_line_that_never_ends_counts_against_the_head_limit(serve, framing):
    srv = serve()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        sent = send_until_refused(s, framing, 256 << 20)
    assert sent < 64 << 20
    assert httpx.get(srv.url + "/health").status_code == 200


def test_chunked_bodies_with_trailers_or_many_small_chunks_are_served(serve):
    srv = serve()
    body = json.dumps(HELLO).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    with_trailer = head + b"\r\n%x\r\n%s\r\n0\r\nX-Checksum: 1\r\n\r\n" % (len(body), body)
    tiny_chunks = head + b"\r\n" + b"".join(b"1\r\n%c\r\n" % c for c in body) + b"0\r\n\r\n"  # framing 5x the data
    padded = body + b" " * 20_000  # ~100 KB of framing: beyond 32 KiB, but 64 bytes a chunk is allowed
    many = head + b"\r\n" + b"".join(b"1\r\n%c\r\n" % c for c in padded) + b"0\r\n\r\n"
    for request in (with_trailer, tiny_chunks, many):
        r = raw(
            srv.port, request[: request.index(b"\r\n") + 2] + b"Connection: close\r\n" + request[request.index(b"\r\n") + 2 :]
        )
        assert status_of(r) == 200, r[:300]


@pytest.mark.parametrize("how", ["close", "half-close", "reset"])
def test_clients_that_leave_mid_body_free_their_slot_at_once(serve, how):
    """Item 3: 530 x (a head announcing 100,000 bytes, one byte, close) left /health unanswered for
    ~70 s: a client that ends its input in the middle of a body is gone (it can't finish the request)."""
    srv = serve(limits=ConnectionLimits(max_connections=40))  # (body time: the default 60 s)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    for _ in range(120):  # three times the connection cap
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(head)
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif how == "half-close":
            s.shutdown(socket.SHUT_WR)
        s.close()
    r = httpx.get(srv.url + "/health", timeout=10)
    assert r.status_code == 200
    assert httpx.post(srv.url + "/v1/chat/completions", json=HELLO, timeout=30).status_code == 200


# -- issue 21 §4: the private uvicorn hooks this module relies on are where it expects them -------------------------
def test_the_private_uvicorn_hooks_are_still_there():
    """connections.py subclasses uvicorn's HttpToolsProtocol (not public API): if an upgrade moves
    one of the hooks or attributes it uses, this fails naming it, rather than the limits silently
    stopping to hold. pyproject.toml bounds uvicorn to the versions this passed on."""
    import asyncio
    import inspect

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    from uvicorn.server import ServerState

    from eft_local.server.connections import CYCLE_STATE, UVICORN_HOOKS, UVICORN_STATE, guarded_protocol

    where = f"uvicorn {uvicorn.__version__}"
    for cls, names in UVICORN_HOOKS.items():
        for name in names:
            assert callable(getattr(cls, name, None)), f"{where}: {cls.__name__}.{name} is gone"
    cls = guarded_protocol(ConnectionLimits())
    config = uvicorn.Config(lambda scope, receive, send: None, http=cls)
    loop = asyncio.new_event_loop()
    try:
        protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()
    missing = [name for name in UVICORN_STATE if not hasattr(protocol, name)]
    assert not missing, f"{where}: HttpToolsProtocol no longer sets {missing}"
    source = inspect.getsource(RequestResponseCycle.__init__)
    missing = [name for name in CYCLE_STATE if f"self.{name} =" not in source]
    assert not missing, f"{where}: RequestResponseCycle no longer sets {missing}"
    assert "on_response" in inspect.signature(RequestResponseCycle.__init__).parameters, where
    pipelining = inspect.getsource(cls.__mro__[1].on_headers_complete)
    assert "pipeline.appendleft" in pipelining and "pause_reading" in pipelining, f"{where}: pipelining changed"


# -- issue 23 item 8: a queued request whose client left never starts ---------------------------------------------
@pytest.mark.parametrize("how", ["close", "reset"])
def test_queued_requests_whose_clients_left_never_start(serve, stalled, how):
    """Before: 16 abandoned queued requests all ran (150 s to drain) -- a client that closes sends a
    FIN, which the server took for a half-close. Now a request that waits past ASK_AFTER_SECONDS is
    asked (an interim 100 Continue; a closed client answers with a reset) and withdrawn. A client that
    only half-closed still gets its answer."""
    srv = serve()
    url = srv.url + "/v1/chat/completions"
    body = {**HELLO, "max_tokens": 3}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, url, json=body, timeout=60)  # holds the engine (stalled)
        wait_until(lambda: stalled.calls == 1, "the first request to start")
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(post_bytes("/v1/chat/completions", body))
            if how == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        half = pool.submit(raw, srv.port, post_bytes("/v1/chat/completions", body), half_close=True, timeout=60)
        wait_until(lambda: srv.worker.waiting == 13, "the requests to queue")
        wait_until(lambda: srv.worker.waiting == 1, "the abandoned requests to leave the queue", limit=20)
        assert stalled.calls == 1
        stalled.set()
        assert first.result(60).status_code == 200
        answer = half.result(60)
    assert status_of(answer) == 200 and json.loads(body_of(answer))["choices"][0]["message"]["role"] == "assistant"
    assert stalled.calls == 2  # the first and the half-closed one; none of the twelve
    assert httpx.get(srv.url + "/health").json()["waiting"] == 0


@pytest.fixture(scope="module")
def session_of_two(family):
    session = Session(EftEngine.load(family.paths(), n_ctx=512, n_threads=1, n_seq=2))
    yield session
    session.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_under_parallel_queued_requests_whose_clients_left_never_start(session_of_two, monkeypatch, how):
    """The same under --parallel, where a request waits in the scheduler beyond its sequences: it
    starts (and answers 200) only when it takes a sequence, so its client is asked while it waits,
    and a request whose client left skips its turn (one prompt or several)."""
    import eft_local.engine.scheduler as scheduler

    srv = GuardedServer(session_of_two, parallel=2, max_queue=32)
    made, release, sched = [], threading.Event(), srv.worker.scheduler
    monkeypatch.setattr(scheduler, "Generation", lambda *a, **k: made.append(1) or Generation(*a, **k))
    served = sched._served
    monkeypatch.setattr(sched, "_served", lambda: served() if release.is_set() else time.sleep(0.02) or [])  # sequences hold
    chat = {**HELLO, "max_tokens": 3}
    several = post_bytes("/v1/completions", {"prompt": ["hello", "there"], "max_tokens": 3})
    try:
        with ThreadPoolExecutor(3) as pool:
            first = [pool.submit(httpx.post, srv.url + "/v1/chat/completions", json=chat, timeout=60) for _ in range(2)]
            wait_until(lambda: len(made) == 2, "two requests to take the two sequences")
            for i in range(10):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(several if i % 5 == 0 else post_bytes("/v1/chat/completions", chat))
                if how == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            half = pool.submit(raw, srv.port, post_bytes("/v1/chat/completions", chat), half_close=True, timeout=60)
            wait_until(lambda: srv.worker.waiting == 13, "the requests to queue in the scheduler")  # (two of two prompts)
            wait_until(lambda: srv.worker.waiting == 1, "the abandoned requests to leave the queue", limit=20)
            assert len(made) == 2
            release.set()
            assert [f.result(60).status_code for f in first] == [200, 200]
            answer = half.result(60)
        assert status_of(answer) == 200 and json.loads(body_of(answer))["choices"][0]["message"]["role"] == "assistant"
        assert len(made) == 3  # the first two and the half-closed one; none of the ten
        assert httpx.get(srv.url + "/health").json()["waiting"] == 0
    finally:
        release.set()
        srv.stop()


def wait_until(condition, what: str, limit: float = 30) -> None:
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
