"""Chat templates rendered in a child process, bounded in time, output size and memory.

A GGUF's chat template is Jinja code from the internet. Jinja's sandbox stops attribute tricks,
but not a loop that runs for hours without output, nor a filter that builds a gigantic string
in one C call (``'x'|center(10**9)``). So templates render in one long-lived child process:

- time: the parent waits at most ``RENDER_SECONDS`` for an answer, then kills the child (a
  fresh one starts with the next render). The waiting thread sleeps in ``select``, so the
  main thread's signal handlers (Ctrl+C) run at any time;
- size: the rendered text may not exceed twice the messages' text plus a fixed allowance;
- memory: the child's address space is capped (``MEMORY_BYTES``): a runaway allocation is a
  ``MemoryError`` there, never in the caller.

The child runs in its own session (a terminal's Ctrl+C does not reach it) and exits when its
stdin closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

RENDER_SECONDS = 5.0  # real templates take milliseconds
START_SECONDS = 30.0  # starting the child (Python + Jinja) on a loaded machine
MEMORY_BYTES = 1 << 30  # the child's address-space limit
OVERHEAD_CHARS = 1_000_000  # rendered text beyond twice the messages' text
_FRAME = struct.Struct(">Q")
_SLICE_SECONDS = 0.1
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class TemplateFailed(Exception):
    """The template raised, ran too long, grew too large, or its renderer died: one line."""


def output_cap(messages: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(characters of message text, the most characters a render may produce for them)."""
    n_in = sum(len(str(m.get("content", ""))) + len(str(m.get("role", ""))) for m in messages)
    return n_in, 2 * n_in + OVERHEAD_CHARS


# -- the parent side ------------------------------------------------------------------------
class _Renderer:
    """One child process, one render at a time (a lock serialises callers from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def render(self, request: dict[str, Any], timeout: float) -> str:
        with self._lock:
            try:
                proc = self._started()
                _write_frame(proc, json.dumps(request).encode())
                reply = json.loads(_read_frame(proc, time.monotonic() + timeout, timeout))
            except TemplateFailed:
                self._kill()
                raise
            except BaseException:  # Ctrl+C mid-render, a broken pipe: the child's state is unknown
                self._kill()
                raise
        if "error" in reply:
            raise TemplateFailed(reply["error"])
        return reply["text"]

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); " + _CHILD_MAIN, _PACKAGE_ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                _read_frame(self._proc, time.monotonic() + START_SECONDS, START_SECONDS, starting=True)
            except TemplateFailed:
                self._kill()
                raise TemplateFailed("the template renderer did not start") from None
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def close(self) -> None:
        """At exit: end the child without waiting for a render in progress (that thread then
        sees the child gone and fails its render)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


_CHILD_MAIN = "from eft_local.llama.template_sandbox import child_main; child_main()"
_renderer = _Renderer()
atexit.register(_renderer.close)


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
    timeout: float | None = None,
) -> str:
    """``template`` rendered with these variables, or ``TemplateFailed`` (never a hang, never
    an exhausted memory)."""
    _n_in, cap = output_cap(messages)
    timeout = RENDER_SECONDS if timeout is None else timeout
    request = {
        "template": template,
        "cap": cap,
        "seconds": timeout,
        "vars": {
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": bos_token,
            "eos_token": eos_token,
        },
    }
    return _renderer.render(request, timeout)


def warm() -> None:
    """Start the child now (a server does this at start-up, so no request waits for it)."""
    with _renderer._lock:
        try:
            _renderer._started()
        except (TemplateFailed, OSError):
            _renderer._kill()


def _write_frame(proc: subprocess.Popen[bytes], data: bytes) -> None:
    try:
        proc.stdin.write(_FRAME.pack(len(data)) + data)
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        raise TemplateFailed("the template renderer stopped") from None


def _read_frame(proc: subprocess.Popen[bytes], deadline: float, timeout: float, starting: bool = False) -> bytes:
    """One framed reply; TemplateFailed at ``deadline`` or when the child dies."""
    fd = proc.stdout.fileno()
    buf = bytearray()
    need = _FRAME.size
    header_done = False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                what = "starting" if starting else "rendering"
                raise TemplateFailed(f"took longer than {timeout:g} s {what}; stopped")
            if not sel.select(min(left, _SLICE_SECONDS)):  # slices: a signal meant for this thread runs its handler
                continue
            chunk = os.read(fd, min(need - len(buf), 1 << 20))
            if not chunk:
                code = proc.wait(1)
                killed = code == -signal.SIGKILL or code == -signal.SIGSEGV
                raise TemplateFailed("the template renderer crashed" + (" (out of memory?)" if killed else ""))
            buf += chunk
            if not header_done and len(buf) >= _FRAME.size:
                need = _FRAME.size + _FRAME.unpack(bytes(buf[: _FRAME.size]))[0]
                header_done = True
    return bytes(buf[_FRAME.size :])


# -- the child side -------------------------------------------------------------------------
def child_main() -> None:
    """Read framed requests from stdin, answer each with a framed reply, until stdin closes."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    except (ValueError, OSError):  # a lower hard limit already applies
        pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    env = _environment()
    compiled: dict[str, Any] = {}

    def reply(obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        stdout.write(_FRAME.pack(len(data)) + data)
        stdout.flush()

    reply({"ready": True})
    while True:
        head = stdin.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        request = json.loads(stdin.read(_FRAME.unpack(head)[0]))
        # A watchdog of its own: should the parent die mid-render, no orphan spins on (SIGALRM ends the process).
        signal.alarm(math.ceil(request["seconds"]) + 2)
        try:
            reply({"text": _render(env, compiled, request)})
        except MemoryError:
            compiled.clear()
            reply({"error": f"ran out of memory (more than {MEMORY_BYTES >> 20} MiB)"})
        except RecursionError:
            reply({"error": "recursion too deep"})
        except Exception as e:  # noqa: BLE001 - any template failure is an answer, not a crash
            reply({"error": f"{type(e).__name__}: {str(e)[:300]}" if not _is_template_error(e) else str(e)[:300]})
        finally:
            signal.alarm(0)


def _is_template_error(e: Exception) -> bool:
    from jinja2 import TemplateError

    return isinstance(e, TemplateError)


def _render(env: Any, compiled: dict[str, Any], request: dict[str, Any]) -> str:
    source, cap = request["template"], request["cap"]
    template = compiled.get(source)
    if template is None:
        if len(compiled) >= 8:
            compiled.clear()
        template = compiled[source] = env.from_string(source)
    parts: list[str] = []
    size = 0
    for part in template.generate(**request["vars"]):
        size += len(part)
        if size > cap:
            raise _too_large(f"rendered more than {cap:,} characters for the messages given; refusing (a broken template?)")
        parts.append(part)
    return "".join(parts)


def _too_large(message: str) -> Exception:
    from jinja2 import TemplateError

    return TemplateError(message)


def _environment() -> Any:
    """Jinja's immutable sandbox, plus: ``'x' * n`` and ``a ** b`` can't build a gigantic value in one step."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class TemplateEnv(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(("*", "**"))

        def call_binop(self, context, operator, left, right):
            if operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple)):
                left, right = right, left
            if operator == "*" and isinstance(left, (str, list, tuple)) and isinstance(right, int):
                if len(left) * right > OVERHEAD_CHARS:
                    raise TemplateError(f"a repetition of {len(left) * right:,} items is too large")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1000:
                raise TemplateError("an exponent above 1000 is too large")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = TemplateEnv(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env
