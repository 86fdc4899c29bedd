"""A TCP relay that delays every chunk it forwards: loopback RPC with a network's latency.

Each chunk read from one side is written to the other ``delay`` seconds later (order kept),
so one RPC request/response round trip costs about 2 × delay on top of loopback.
Used by ``scripts/bench_rpc.py`` and ``tests/llama/test_rpc.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class LatencyProxy:
    """``127.0.0.1:<port>`` -> ``target``, adding ``delay`` seconds per forwarded chunk."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self.chunks = 0  # chunks forwarded, both directions (each waited `delay`)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Reader thread stamps chunks; writer thread sends each one when its time has come."""
        queue: deque[tuple[float, bytes]] = deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = src.recv(1 << 20)
                except OSError:
                    data = b""
                with ready:
                    self.chunks += 1
                    queue.append((time.perf_counter() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()
