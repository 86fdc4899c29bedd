"""No path of this machine in anything a client gets."""

from __future__ import annotations

import os
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
from eft_local.server.redact import scrub
from tests.conftest import server_settings

HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


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


MODEL = "synthetic-eft"


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
