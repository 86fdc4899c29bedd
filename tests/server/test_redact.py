"""No path of this machine in anything a client gets."""

from __future__ import annotations

import os

import httpx

from eft_local.server.redact import scrub
from tests.server.conftest import HELLO


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
