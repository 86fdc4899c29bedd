"""``eft-local rpc-server`` survives its own crashes (issue 15 item 18): a parent restarts the
serving process, logging the cause and the peer. Servers run as subprocesses on loopback."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eft_local.cli import rpc_supervisor
from eft_local.cli.rpc_supervisor import Supervisor
from eft_local.errors import UserError
from eft_local.llama import rpc
from tests.conftest import ROOT
from tests.llama.test_rpc import free_port, needs_rpc, start_server, stop

HELLO = bytes([14]) + struct.pack("<Q", 24) + bytes(24)


def crafted_crash(port: int) -> str:
    """A valid HELLO, then one 9-byte message (a command and an absurd size): llama.cpp's
    server dies with std::length_error. Returns our address as the server saw it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(HELLO)
        answer = b""
        while len(answer) < 8 + 28:  # the HELLO answer: size, then version and capabilities
            answer += s.recv(8 + 28 - len(answer))
        s.sendall(bytes([6]) + struct.pack("<Q", 2**64 - 1))
        me = "{}:{}".format(*s.getsockname())
        s.settimeout(5)
        assert s.recv(16) == b""  # the server process is gone
    return me


def answers_again_within(port: int, limit: float) -> float:
    """Seconds until the server answers a HELLO again (fails after ``limit``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            rpc.probe(f"127.0.0.1:{port}", timeout=0.5)
            return time.monotonic() - t0
        except UserError:
            time.sleep(0.05)
    raise AssertionError(f"the server did not come back within {limit} s")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@needs_rpc
def test_a_crafted_message_crash_is_logged_and_the_server_restarts():
    proc, port = start_server()
    try:
        me = crafted_crash(port)
        back = answers_again_within(port, 10)
        me2 = crafted_crash(port)  # and again: the class, not one crash
        answers_again_within(port, 10)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 0 and err.strip().endswith("eft-local: rpc-server stopped"), err
    crashes = [line for line in err.splitlines() if "rpc-server crashed" in line]
    assert len(crashes) == 2, err
    assert "SIGABRT" in crashes[0] and "std::length_error" in crashes[0] and f"while serving {me}" in crashes[0]
    assert f"while serving {me2}" in crashes[1] and me not in crashes[1]
    assert f"Accepted client connection from {me}" in err
    assert back < 5  # restart within a second, plus the new process's start-up (~1 s on 2 busy cores)


@needs_rpc
@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["segv", "killed"])
def test_a_child_that_dies_of_a_signal_is_restarted(sig):
    proc, port = start_server()
    try:
        (child,) = children(proc.pid)
        os.kill(child, sig)
        deadline = time.monotonic() + 10
        while child in children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        answers_again_within(port, 10)
        (new_child,) = children(proc.pid)
        assert new_child != child
        proc.send_signal(signal.SIGTERM)  # SIGTERM stops it as Ctrl+C does, child included
        _, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 0 and "rpc-server stopped" in err
    assert f"rpc-server crashed ({signal.Signals(sig).name}" in err
    assert not Path(f"/proc/{new_child}").exists() or "zombie" in Path(f"/proc/{new_child}/status").read_text()


@needs_rpc
def test_no_restart_serves_in_one_process_and_a_crash_ends_it():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "rpc-server", "--port", str(port), "--threads", "1", "--no-restart"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        answers_again_within(port, 30)
        assert children(proc.pid) == []
        crafted_crash(port)
        proc.wait(10)
    finally:
        stop(proc)
    assert proc.returncode != 0 and "a crash ends it" in proc.stderr.read()


def test_a_child_that_cannot_start_makes_the_parent_give_up(monkeypatch, capsys):
    import io

    monkeypatch.setattr(rpc_supervisor, "RESTART_DELAY", 0.01)
    monkeypatch.setattr(rpc_supervisor, "MAX_RESTART_DELAY", 0.01)
    log = io.StringIO()
    failing = [sys.executable, "-c", "import sys; print('cannot listen on 127.0.0.1:1: in use'); sys.exit(3)"]
    assert Supervisor(failing, free_port(), log=log).run() == 1
    text = log.getvalue()
    assert text.splitlines().count("cannot listen on 127.0.0.1:1: in use") == rpc_supervisor.STARTUP_FAILURES
    assert text.count("rpc-server failed to start") == rpc_supervisor.STARTUP_FAILURES - 1
    assert text.strip().splitlines()[-1].startswith("eft-local: error: the RPC server could not start (exit status 3")


@needs_rpc
def test_ctrl_c_in_a_terminal_stops_parent_and_child_with_one_line():
    """A terminal's Ctrl+C reaches the whole process group: the child leaves it to the parent."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "rpc-server", "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        answers_again_within(port, 30)
        (child,) = children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 0 and err.count("rpc-server stopped") == 1 and "crashed" not in err, err
    assert "Traceback" not in err and not Path(f"/proc/{child}").exists()
