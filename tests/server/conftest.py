"""The server's test harnesses, defined once: the app as `serve` runs it (Guard + the bounded
connection protocol) from a thread, the `serve` command as a process, and raw-socket helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import uvicorn

from eft_local.engine.decoder import EftEngine
from eft_local.engine.session import Session
from eft_local.server.app import ServerOptions, create_app
from eft_local.server.connections import ConnectionLimits, guarded_protocol
from eft_local.server.guard import Guard, access_policy
from tests.conftest import ServerThread, server_settings

MODEL = "synthetic-eft"
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


class GuardedServer(ServerThread):
    """The app as `serve` runs it (Guard + guarded protocol), from a thread, on 127.0.0.1."""

    def __init__(
        self,
        session,
        *,
        limits: ConnectionLimits | None = None,
        allowed_hosts=(),
        allow_origins=(),
        api_key=None,
        max_queue: int = 16,
        settings: dict | None = None,
        parallel: int = 1,
    ) -> None:
        settings = settings or server_settings()
        options = ServerOptions(MODEL, settings, api_key=api_key, max_queue=max_queue, parallel=parallel)
        app = create_app(session, options)
        limits = limits or ConnectionLimits()
        config = uvicorn.Config(
            Guard(app, access_policy("127.0.0.1", allowed_hosts, allow_origins)),
            http=guarded_protocol(limits),
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=int(limits.keep_alive_seconds),
        )
        super().__init__(app, config)


@pytest.fixture(scope="module")
def session(family):
    engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    s = Session(engine)
    yield s
    s.close()


@pytest.fixture
def serve(session):
    """``serve(**kw)`` starts a GuardedServer over the module's session; all stop at the test's end."""
    servers = []

    def start(**kw) -> GuardedServer:
        servers.append(GuardedServer(session, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def stalled(session, monkeypatch):
    """Every prompt waits (on the engine thread) until the test ends or sets the event: an answer
    that stays unfinished, and a queue behind it. ``release.calls`` counts the prompts that started."""
    release = threading.Event()
    release.calls = 0
    prompt = session.prompt

    def slow(*args, **kw):
        release.calls += 1
        release.wait(60)
        return prompt(*args, **kw)

    monkeypatch.setattr(session, "prompt", slow)
    yield release
    release.set()


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
    """The final status of a raw response (interim 1xx responses skipped, as clients do)."""
    while response.startswith(b"HTTP/1.1 1"):
        response = response.split(b"\r\n\r\n", 1)[1]
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    while response.startswith(b"HTTP/1.1 1"):
        response = response.split(b"\r\n\r\n", 1)[1]
    return response.split(b"\r\n\r\n", 1)[1]


def post_bytes(path: str, body: dict, extra: str = "", content_type: str = "application/json") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


def start_serve(family, *extra: str, env: dict | None = None, preexec_fn=None) -> tuple[subprocess.Popen, int]:
    """`eft-local serve` over ``family`` as a process; returns it and its port once it serves."""
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
