"""Stopping `serve` with requests in flight, and a flood beyond the file limit."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server.conftest import start_serve


# -- 4: stopping with requests in flight -------------------------------------------------------------------------------
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


# -- issue 23 item 5: every running request gets the documented 503, and two signals print no traceback ----------------
WHOLE = {
    "echo": {"prompt": [[5] * 1000] * 48, "max_tokens": 0, "echo": True, "logprobs": 5},  # scoring, seconds long
    "multi-prompt": {"prompt": ["a long story"] * 8, "max_tokens": 1000, "temperature": 0},  # several generations
    "echo+generate": {"prompt": ["a long story", "another"], "max_tokens": 1000, "echo": True, "logprobs": 1, "temperature": 0},
}


def wait_running(port: int) -> None:
    end = time.monotonic() + 60
    while not httpx.get(f"http://127.0.0.1:{port}/health").json()["running"]:
        assert time.monotonic() < end, "the request did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("kind", list(WHOLE))
@pytest.mark.parametrize(
    "sig, parallel",
    [
        (signal.SIGTERM, 1),
        pytest.param(signal.SIGINT, 1, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, 2, marks=pytest.mark.slow),
    ],
    ids=["term", "int", "term-parallel"],
)
def test_a_running_blocking_echo_or_multi_prompt_request_gets_503_shutting_down(family, kind, sig, parallel):
    """Before: an empty 499."""
    proc, port = start_serve(family, "--parallel", str(parallel))
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v1/completions", json=WHOLE[kind], timeout=120)
            wait_running(port)
            time.sleep(0.2)
            proc.send_signal(sig)
            r = answer.result(60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down", (r.status_code, r.text[:300])
        rest = proc.stderr.read()
        assert proc.wait(30) == 0 and "Traceback" not in rest, rest
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["stream", pytest.param("blocking", marks=pytest.mark.slow), "echo", "idle"])
def test_two_sigints_close_together_print_no_traceback(family, kind):
    proc, port = start_serve(family)
    url = f"http://127.0.0.1:{port}/v1/completions"
    bodies = {
        "stream": {"prompt": "a long story", "max_tokens": 1000, "stream": True},
        "blocking": {"prompt": "a long story", "max_tokens": 1000},
        "echo": WHOLE["echo"],
    }
    try:
        with ThreadPoolExecutor(1) as pool:
            if kind != "idle":
                pool.submit(lambda: httpx.post(url, json=bodies[kind], timeout=60).status_code)
                wait_running(port)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            rest = proc.stderr.read()
            code = proc.wait(30)
        assert "Traceback" not in rest and "CancelledError" not in rest and "Exception in ASGI" not in rest, rest
        # (a signal that lands while the interpreter exits, after its handlers are gone, ends it by SIGINT: -2)
        assert code in (0, 130, -signal.SIGINT) and rest.strip().splitlines()[-1] == "eft-local: server stopped", rest
    finally:
        proc.kill()
        proc.wait()
