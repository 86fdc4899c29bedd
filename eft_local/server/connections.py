"""Bounded connections (issue 15 items 3 and 7): uvicorn's httptools protocol, plus limits.

uvicorn bounds neither the size of a request's head (httptools has no limit; h11's only answers
400) nor the time a client may take to send it, and its ``limit_concurrency`` answers 503 to
*everyone* once a flood of never-finished requests fills the slots. Here, per connection:

- head size: request line + headers beyond ``max_head_bytes`` -> 431, connection closed (the
  head is fed to the parser in slices, so no more than the limit is ever held);
- head time: a connection must finish each request's head within ``head_seconds`` of its
  start (or of the first byte after an idle keep-alive period) -> 408, closed;
- body time: the body must arrive within ``body_seconds`` of the head -> 408, closed;
- idle keep-alive: uvicorn's ``timeout_keep_alive`` (``keep_alive_seconds``);
- count: at most ``max_connections`` open at once; one more evicts the oldest connection that
  has no request in progress (idle, or still sending its head), so a flood of slow or silent
  connections cannot keep out a client that sends its request at once; when every connection
  has a request in progress, the newcomer is closed;
- half-close: a client that shuts its sending side after its request (TCP FIN) still gets
  the answer; the connection closes after it. (TCP cannot tell a half-close from a client
  that went away; a streamed answer notices the difference at its next write, a blocking
  one runs to its end.)
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from eft_local.server.request import ApiError

FD_RESERVE = 128  # descriptors kept for model files, pipes, the event loop and the listener


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32 * 1024
    head_seconds: float = 10.0
    body_seconds: float = 60.0
    keep_alive_seconds: float = 5.0
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


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An httptools protocol class (for ``uvicorn.Config(http=...)``) enforcing ``limits``."""
    registry = _Registry(limits)

    class GuardedHttp(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = limits.keep_alive_seconds
            self._head_open = True  # between requests or inside a request's head
            self._head_bytes = 0
            self._timer: Any = None
            self._peer_eof = False

        # -- the connection ---------------------------------------------------------------
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.head_seconds)
            registry.admit(self)

        def connection_lost(self, exc: Exception | None) -> None:
            registry.remove(self)
            self._disarm()
            super().connection_lost(exc)

        def evictable(self) -> bool:
            return self._head_open and (self.cycle is None or self.cycle.response_complete)

        def receiving(self) -> bool:
            """A request is still arriving (its head or body)."""
            return self._head_open and self._head_bytes > 0 or (self.cycle is not None and self.cycle.more_body)

        def drop(self) -> None:
            self._disarm()
            self.transport.abort()

        def eof_received(self) -> bool | None:
            if self.cycle is not None and not self.cycle.response_complete:
                self._peer_eof = True  # a half-close after the request: answer, then close
                return True
            return None  # idle or mid-head: the client is done with this connection

        # -- bytes in ------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            while data and self._head_open and not self.transport.is_closing():
                if self._timer is None:  # the first byte after an idle keep-alive period
                    self._arm(limits.head_seconds)
                room = limits.max_head_bytes - self._head_bytes
                if room <= 0:
                    return self._refuse(431, "the request line and headers are larger than {} bytes", limits.max_head_bytes)
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
                super().data_received(piece)
            if data and not self.transport.is_closing():
                super().data_received(data)

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._arm(limits.body_seconds)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is None or self.cycle.response_complete:  # (not a pipelined request already parsed)
                self._head_open, self._head_bytes = True, 0
            if self._peer_eof and not self.transport.is_closing():
                self.transport.close()

        # -- timers and refusals -------------------------------------------------------------
        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _timed_out(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._head_open and self._head_bytes == 0:  # never said anything: just close
                self.transport.close()
            elif self._head_open:
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
