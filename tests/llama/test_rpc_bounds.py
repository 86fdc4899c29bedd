"""Every wait on an RPC server is bounded, and Ctrl+C always ends the client (issue 15 item 17).

Servers that never answer, answer the probe and then go silent, trickle, or are SIGSTOPped
mid-run. The client runs in a subprocess (a stuck ggml call ends the process); a small script
shortens the bounds (``rpc.REPLY_TIMEOUT`` …) so the tests take seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from eft_local.llama import rpc
from tests.cli.test_rpc_supervisor import children
from tests.conftest import ROOT
from tests.llama.test_rpc import model_args, needs_rpc, start_server, stop


@contextlib.contextmanager
def listener(answer_first_hello: bool = False, trickle: float | None = None):
    """A TCP server on 127.0.0.1 that accepts and then says nothing (or answers the first
    HELLO like an rpc-server and goes silent after, or trickles one byte per ``trickle`` s)."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop_event = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop_event.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            if answer_first_hello and len(conns) == 1:
                conn.recv(1 + 8 + 24)
                conn.sendall(struct.pack("<Q", 28) + bytes([3, 0, 0, 0]) + bytes(24))
            elif trickle is not None:
                with contextlib.suppress(OSError):
                    for _ in range(100):
                        if stop_event.wait(trickle):
                            break
                        conn.sendall(b"\x1c")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop_event.set()
        thread.join(5)
        for c in conns:
            c.close()
        srv.close()


def client(argv: list[str], **bounds: float) -> subprocess.Popen:
    """``eft-local ARGV`` in a subprocess with some of rpc's bounds shortened."""
    setup = [f"rpc.{name} = {value!r}" for name, value in bounds.items()]
    script = "; ".join(
        ["import sys", "from eft_local import cli", "from eft_local.llama import rpc", *setup, f"sys.exit(cli.main({argv!r}))"]
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, time.monotonic() - t0


def one_line(err: str) -> str:
    """The client's final message: its last non-progress line, and there is exactly one such."""
    lines = [line for line in err.splitlines() if line.startswith("eft-local:")]
    assert len(lines) == 1, err
    return lines[0]


# -- the bounded call itself (no server needed) ------------------------------------------------------
def run_script(body: str, *, interrupt_after: float | None = None) -> tuple[int, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(body)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err, time.monotonic() - t0


def test_a_call_past_its_bound_ends_the_process_with_one_line():
    code, out, _ = run_script(
        """
        import time
        from eft_local.llama import rpc
        rpc.bounded(lambda: time.sleep(30), ["10.0.0.5:50052"], "decoding 1 token(s) of base.gguf", 0.5)
        print("NOT REACHED")
        """
    )
    assert code == rpc.EXIT_RPC_LOST and "NOT REACHED" not in out
    assert "RPC server 10.0.0.5:50052 gave no answer within 0.5 s while decoding 1 token(s)" in out
    assert out.strip().count("\n") == 0


def test_a_slow_call_that_keeps_progressing_is_not_cut():
    code, out, _ = run_script(
        """
        import time
        from eft_local.llama import rpc
        moved = [time.monotonic()]
        def load():
            for _ in range(8):
                time.sleep(0.2)
                moved[0] = time.monotonic()
            return "loaded"
        print(rpc.bounded(load, ["h:1"], "loading", 0.5, last_progress=lambda: moved[0]))
        """
    )
    assert code == 0 and out.strip() == "loaded", out


def test_ctrl_c_lets_a_call_that_finishes_soon_end_normally():
    code, out, elapsed = run_script(
        """
        import time
        from eft_local.llama import rpc
        try:
            rpc.bounded(lambda: time.sleep(1.5), ["h:1"], "decoding", 60)
        except KeyboardInterrupt:
            print("INTERRUPTED CLEANLY")
        """,
        interrupt_after=1.0,
    )
    assert code == 0 and "INTERRUPTED CLEANLY" in out, out
    assert elapsed < rpc.INTERRUPT_GRACE + 2


def test_ctrl_c_during_a_stuck_call_ends_within_the_grace():
    code, out, elapsed = run_script(
        """
        import time
        from eft_local.llama import rpc
        rpc.bounded(lambda: time.sleep(60), ["h:1"], "decoding 4 token(s) of base.gguf", 60)
        """,
        interrupt_after=1.0,
    )
    assert code == rpc.EXIT_INTERRUPTED
    assert "interrupted while waiting for RPC server h:1 (decoding 4 token(s) of base.gguf)" in out
    assert out.strip().count("\n") == 0 and elapsed < rpc.INTERRUPT_GRACE + 2


def test_a_stuck_call_on_a_worker_thread_does_not_hold_up_the_exit():
    """A front end (server, chat app) decodes on a worker thread; when its main thread ends
    after Ctrl+C, the interpreter would wait for that worker forever."""
    code, out, elapsed = run_script(
        """
        import threading, time
        from eft_local.llama import rpc
        worker = threading.Thread(target=rpc.bounded, args=(lambda: time.sleep(60), ["h:1"], "decoding", 60))
        worker.start()
        time.sleep(0.3)
        print("main thread done", flush=True)
        """
    )
    assert code == rpc.EXIT_INTERRUPTED and "main thread done" in out
    assert "interrupted while waiting for RPC server h:1 (decoding)" in out
    assert elapsed < rpc.INTERRUPT_GRACE + 3


# -- against servers ------------------------------------------------------------------------------------
@needs_rpc
@pytest.mark.parametrize("trickle", [None, 1.0], ids=["silent", "trickling"])
def test_listener_that_never_answers_is_refused_within_the_probe_bound(family, tmp_path, trickle):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    with listener(trickle=trickle) as endpoint:
        code, err, elapsed = finish(client(model_args(family, prompts, "--rpc", f"base={endpoint}")))
    assert code == 2
    assert f"RPC server {endpoint}: no answer within 3 s" in one_line(err)
    assert elapsed < rpc.PROBE_TIMEOUT * 2 + 5


@needs_rpc
def test_server_silent_after_the_probe_ends_within_the_registration_bound(family, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    with listener(answer_first_hello=True) as endpoint:
        code, err, elapsed = finish(client(model_args(family, prompts, "--rpc", f"base={endpoint}"), REGISTER_TIMEOUT=1.0))
    assert code == rpc.EXIT_RPC_LOST
    assert f"RPC server {endpoint} gave no answer within 1 s while registering its devices" in one_line(err)
    assert elapsed < 15


@needs_rpc
def test_ctrl_c_while_a_server_is_silent_at_load(family, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    with listener(answer_first_hello=True) as endpoint:
        proc = client(model_args(family, prompts, "--rpc", f"base={endpoint}"))
        time.sleep(4)  # past the probe, inside ggml's own (silent) handshake
        proc.send_signal(signal.SIGINT)
        code, err, elapsed = finish(proc)
    assert code == rpc.EXIT_INTERRUPTED and elapsed < rpc.INTERRUPT_GRACE + 3
    assert f"interrupted while waiting for RPC server {endpoint}" in one_line(err)


@needs_rpc
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["bound", "ctrl-c"])
def test_sigstopped_server_mid_run(family, tmp_path, ctrl_c):
    """A stopped server's kernel still accepts and acknowledges: only a bound ends the wait."""
    server, port = start_server()
    prompts = tmp_path / "many.txt"
    prompts.write_text("".join(f"hello world {i}\n" for i in range(300)))
    out = tmp_path / "out.jsonl"
    partial = out.with_name(out.name + ".partial")
    argv = model_args(family, prompts, "--max-tokens", "200", "--output", str(out), "--rpc", f"base=127.0.0.1:{port}")
    proc = client(argv, **({} if ctrl_c else {"REPLY_TIMEOUT": 2.0}))  # Ctrl+C: well inside the bound
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (partial.exists() and partial.read_text().count("\n") >= 1):
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        (serving,) = children(server.pid)  # the process the supervising parent started
        os.kill(serving, signal.SIGSTOP)
        if ctrl_c:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
        code, err, elapsed = finish(proc)
    finally:
        with contextlib.suppress(NameError, ProcessLookupError):
            os.kill(serving, signal.SIGCONT)
        stop(server)
    line = one_line(err)
    if ctrl_c:
        assert code == rpc.EXIT_INTERRUPTED and elapsed < rpc.INTERRUPT_GRACE + 3, err
        assert f"interrupted while waiting for RPC server 127.0.0.1:{port}" in line
    else:
        assert code == rpc.EXIT_RPC_LOST and elapsed < 15, err  # 2 s + 0.25 s per token of a block
        assert f"RPC server 127.0.0.1:{port} gave no answer within" in line and "decoding" in line
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert rows and all(r["finish_reason"] in ("length", "stop") for r in rows)
