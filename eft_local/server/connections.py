"""Bounded connections: uvicorn's httptools protocol, plus limits (issue 15 items 3 and 7, issue 23 items 1-3, 8).

uvicorn bounds neither the size of a request's head (httptools has no limit; h11's only answers
400) nor the time a client may take to send it, nor how long it waits for a client that stopped
reading; and its ``limit_concurrency`` answers 503 to *everyone* once a flood of never-finished
requests fills the slots. Here, per connection:

- head size: what is not body in a request -- request line, headers, and for a chunked body
  its chunk-size lines and trailers (``CHUNK_FRAMING_BYTES`` a chunk allowed for the framing) --
  beyond ``max_head_bytes`` -> 431, connection closed. Bytes go to the parser in slices no
  larger than what is left, so no more than the limit is ever held, for every request of a
  connection: a request pipelined behind an unfinished answer counts from its first byte;
- head time: each request's head must arrive within ``head_seconds`` of its first byte (or of
  the connection's start) -> 408, closed; body time: the body within ``body_seconds`` of the
  head -> 408, closed; idle keep-alive: uvicorn's ``timeout_keep_alive``;
- pipelining: while one request waits behind an unfinished answer, nothing more is read (so a
  connection holds at most one pipelined request, not a queue of them);
- writing: a client that stops reading fills the transport's buffer (64 KiB high water, on top
  of the kernel's); if it stays full for ``write_seconds`` the connection is aborted and its
  request cancelled;
- count: at most ``max_connections`` open at once; one more evicts the oldest connection that
  has no request in progress (idle, or still sending its head), so a flood of slow or silent
  connections cannot keep out a client that sends its request at once; when every connection
  has a request in progress, the newcomer is closed;
- end of input: a client that shuts its sending side after a whole request (TCP FIN) still
  gets the answer, the connection closing after it; one that shuts it in the middle of a body
  can never finish the request: it is gone, and its slot is freed at once. TCP cannot tell a
  half-close from a client that closed entirely, so ``client_left`` asks: once, it sends an
  interim ``100 Continue`` (which every HTTP/1.1 client skips) and a client that closed
  answers it with a reset.

These hooks subclass uvicorn's ``HttpToolsProtocol``, whose internals are not public API:
``UVICORN_HOOKS`` lists what is used, pyproject.toml bounds the tested versions and
tests/server/test_connections.py fails loudly if one moves.
"""

from __future__ import annotations

import json
import resource
import socket
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from eft_local.server.request import ApiError

FD_RESERVE = 128  # descriptors kept for model files, pipes, the event loop and the listener
CHUNK_FRAMING_BYTES = 64  # a chunk's size line and CRLFs (a short extension included) beyond its data
PROBE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TCP_CLOSE = 7  # tcp_info.tcpi_state after a reset

# uvicorn internals the protocol below relies on (checked by tests/server/test_connections.py).
UVICORN_HOOKS = {
    HttpToolsProtocol: (
        "data_received", "connection_made", "connection_lost", "eof_received", "on_message_begin", "on_headers_complete", "on_body",
        "on_message_complete", "on_response_complete", "pause_writing", "resume_writing", "shutdown",
    ),
    RequestResponseCycle: ("run_asgi", "send", "receive"),
    FlowControl: ("pause_reading", "resume_reading", "resume_writing", "drain"),
}  # fmt: skip
UVICORN_STATE = ("cycle", "pipeline", "flow", "transport", "loop", "timeout_keep_alive", "scope")  # protocol attributes
CYCLE_STATE = ("response_started", "response_complete", "more_body", "disconnected", "message_event")


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32 * 1024
    head_seconds: float = 10.0
    body_seconds: float = 60.0
    keep_alive_seconds: float = 5.0
    write_seconds: float = 60.0
    max_connections: int = 512


def connection_cap(wanted: int) -> int:
    """``wanted``, or fewer when the process may not open that many descriptors (raising the soft
    limit to the hard one first, as most servers do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FD_RESERVE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def client_left(scope: dict[str, Any]) -> bool:
    """Whether the client of this request is known to have closed its connection (for a server
    run without ``guarded_protocol``: only what uvicorn itself noticed)."""
    conn = scope.get("extensions", {}).get("eft.connection")
    return conn is not None and conn.client_left()


class _Registry:
    """Open connections in the order they came (oldest first)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.live: dict[Any, None] = {}

    def admit(self, conn: Any) -> None:
        self.live[conn] = None
        if len(self.live) <= self.limits.max_connections:
            return
        victim = next((c for c in self.live if c is not conn and c.evictable()), conn)
        victim.drop()

    def remove(self, conn: Any) -> None:
        self.live.pop(conn, None)


class _HeldFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while ``held()`` (a request waits
    behind an unfinished answer): uvicorn resumes reading whenever the app awaits ``receive``."""

    def __init__(self, transport: Any, held: Any) -> None:
        super().__init__(transport)
        self._held = held

    def resume_reading(self) -> None:
        if not self._held():
            super().resume_reading()


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An httptools protocol class (for ``uvicorn.Config(http=...)``) enforcing ``limits``."""
    registry = _Registry(limits)

    class GuardedHttp(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = limits.keep_alive_seconds
            self._in_head = True  # between requests or inside a request's head (else: in a body)
            self._fed = 0  # bytes of the current request given to the parser
            self._payload = 0  # of which body data
            self._chunks = 0  # chunk headers of the current request
            self._held = b""  # bytes after a pipelined request, read on once the answers catch up
            self._timer: Any = None
            self._write_timer: Any = None
            self._peer_eof = False
            self._probed = False

        # -- the connection ---------------------------------------------------------------
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow = _HeldFlow(transport, lambda: bool(self._held or self.pipeline))
            self._arm(limits.head_seconds)
            registry.admit(self)

        def connection_lost(self, exc: Exception | None) -> None:
            registry.remove(self)
            self._disarm()
            self._disarm_write()
            self._held = b""
            super().connection_lost(exc)

        def evictable(self) -> bool:
            return self._in_head and (self.cycle is None or self.cycle.response_complete)

        def receiving(self) -> bool:
            """A request is still arriving (its head or body)."""
            return self._in_head and self._fed > 0 or (self.cycle is not None and self.cycle.more_body)

        def drop(self) -> None:
            self._disarm()
            self.transport.abort()

        def eof_received(self) -> bool | None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                self._peer_eof = True  # a half-close after a whole request: answer, then close
                return True
            return None  # idle, mid-head or mid-body: the client can't finish a request; closed

        def client_left(self) -> bool:
            """True once the client is known gone; after its end of input, probe it once (see the module)."""
            if self.transport.is_closing() or (self.cycle is not None and self.cycle.disconnected):
                return True
            if not self._peer_eof:
                return False
            if not self._probed:
                self._probed = True
                if self.scope.get("http_version") == "1.1" and self.cycle is not None and not self.cycle.response_started:
                    self.transport.write(PROBE)
                return False
            if _was_reset(self.transport):
                self.drop()
                return True
            return False

        # -- bytes in ------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._held:  # (only if reading could not be paused in time)
                self._held += data
                return
            while data and not self.transport.is_closing():
                if self._in_head and self.pipeline and self._fed == 0:  # one request already waits its turn
                    self._held = data
                    self.flow.pause_reading()
                    return
                room = limits.max_head_bytes + CHUNK_FRAMING_BYTES * self._chunks - (self._fed - self._payload)
                if room <= 0:
                    return self._refuse(
                        431,
                        "the request line and headers (or a chunked body's framing) are larger than {} bytes",
                        limits.max_head_bytes,
                    )
                piece, data = data[:room], data[room:]
                self._fed += len(piece)
                super().data_received(piece)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._timer is None:  # the first byte of a head (after an idle pause, or pipelined)
                self._arm(limits.head_seconds)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._arm(limits.body_seconds)
            self.scope.setdefault("extensions", {})["eft.connection"] = self
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._payload += len(body)
            super().on_body(body)

        def on_chunk_header(self) -> None:
            self._chunks += 1

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_head, self._fed, self._payload, self._chunks = True, 0, 0, 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._peer_eof and not self.transport.is_closing() and not self.pipeline:
                self.transport.close()
            elif self._held and not self.transport.is_closing():
                held, self._held = self._held, b""
                self.data_received(held)
                self.flow.resume_reading()

        # -- bytes out -----------------------------------------------------------------------
        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(limits.write_seconds, self.drop)

        def resume_writing(self) -> None:
            self._disarm_write()
            super().resume_writing()

        # -- timers and refusals -------------------------------------------------------------
        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _disarm_write(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _timed_out(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._in_head and self._fed == 0:  # never said anything: just close
                self.transport.close()
            elif self._in_head:
                self._refuse(408, "the request head did not arrive within {:g} s", limits.head_seconds)
            else:
                self._refuse(408, "the request body did not arrive within {:g} s", limits.body_seconds)

        def _refuse(self, status: int, message: str, limit: float) -> None:
            """An OpenAI-shaped error, then close (unless an answer has already begun)."""
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app's receive() now says the client is gone
                self.cycle.message_event.set()
                if self.cycle.response_started:
                    self.transport.close()
                    return
            code = {408: "request_timeout", 431: "headers_too_large"}[status]
            body = json.dumps(ApiError(status, message.format(limit), code=code).body()).encode()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            self.transport.write(head % (status, reason, len(body)) + body)
            self.transport.close()

    return GuardedHttp


def _was_reset(transport: Any) -> bool:
    """The peer answered with a reset (it had closed its end entirely)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        if hasattr(socket, "TCP_INFO"):
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == _TCP_CLOSE
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:
        return True
