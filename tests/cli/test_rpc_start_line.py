"""``eft-local rpc-server``'s start line says what will happen after a crash, not that one happened."""

from __future__ import annotations

import pytest

from eft_local.cli import main, rpc
from eft_local.llama import rpc as llama_rpc


def test_the_start_line_promises_a_restart_without_claiming_a_crash(monkeypatch, capsys):
    if not llama_rpc.supports_rpc():
        pytest.skip("llama.cpp built without RPC")
    monkeypatch.setattr(rpc, "_supervise", lambda *a: 0)  # the parent's loop: not started here
    assert main(["rpc-server", "--port", "50999", "--threads", "1"]) == 0
    line = capsys.readouterr().err.strip()
    assert "rpc-server on 127.0.0.1:50999" in line and "restarts" in line
    assert "restarted" not in line and "after a crash" not in line
