"""``eft-local rpc-server`` survives its own crashes: a parent process that restarts the server.

llama.cpp's RPC server runs client-supplied messages through C++ that can abort the whole
process (one crafted 9-byte message after a HELLO ends in ``std::length_error``), and it has
no error path to recover from such a fault. So the serving process is a child
(``eft-local rpc-server --supervised``) and this parent only watches it: when the child dies
without being asked to, the parent logs the cause (its signal and last lines) and the peer
it was serving, and starts a new child within a second. The parent holds no llama.cpp state,
so nothing a client sends can reach it.

A child that keeps dying before it serves anyone (e.g. the port was taken meanwhile) makes
the parent give up with the child's own message, instead of restarting forever.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

RESTART_DELAY = 0.2  # s between a crash and the next start (then doubled, at most MAX_RESTART_DELAY)
MAX_RESTART_DELAY = 1.0
STARTUP_FAILURES = 5  # children in a row that die before they listen: give up
STARTED = "Starting RPC server"  # llama.cpp's first line once it listens
STOP_GRACE = 2.0  # s a child gets to end after SIGTERM before SIGKILL
ACCEPTED = "Accepted client connection"
PROC_NET = Path("/proc/net/tcp")  # Linux's IPv4 connection table (ggml's RPC is IPv4 only)
_LISTEN = "0A"  # its states (include/net/tcp_states.h)
_ESTABLISHED = "01"
_CLOSING = {"04", "05", "06", "07", "08", "09", "0B"}  # FIN_WAIT1/2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING


def peers(port: int, proc_net: Path | None = None, *, likeliest: bool = False) -> list[str]:
    """Remote ``ip:port`` of the TCP connections to local ``port``, likeliest client first:

    1. open and owned by a process (the client being served: only accepted sockets have an inode);
    2. closing (a client the crash just cut off: FIN_WAIT/TIME_WAIT keep its address a while);
    3. open but not accepted yet (queued behind it: a health probe, say);
    4. anything else but LISTEN.

    ``likeliest``: only those of the best rank present. Linux only: elsewhere (no table, or
    one it can't read) [], and the supervisor says the peer is unknown.
    """
    try:
        lines = (proc_net or PROC_NET).read_text().splitlines()[1:]
    except (OSError, UnicodeDecodeError):
        return []
    ranked = []
    for line in lines:
        fields = line.split()
        try:
            if len(fields) < 10 or fields[3] == _LISTEN or int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            state, inode = fields[3], fields[9]
            rank = (0 if inode != "0" else 2) if state == _ESTABLISHED else 1 if state in _CLOSING else 3
            ranked.append((rank, _address(fields[2])))
        except (ValueError, IndexError):  # a line in a format this doesn't know: skipped, never a crash
            continue
    ranked.sort(key=lambda r: r[0])  # stable: the table's order within a rank
    if likeliest and ranked:
        ranked = [r for r in ranked if r[0] == ranked[0][0]]
    return list(dict.fromkeys(addr for _, addr in ranked))


def _address(hex_addr: str) -> str:
    """``0100007F:1F90`` (as /proc/net/tcp writes it: a little-endian word) -> ``127.0.0.1:8080``."""
    ip, port = hex_addr.split(":")
    octets = bytes.fromhex(ip)[::-1] if sys.byteorder == "little" else bytes.fromhex(ip)
    return f"{'.'.join(str(b) for b in octets)}:{int(port, 16)}"


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
        return f"signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Start the serving child, relay its output, restart it after a crash, stop it on request."""

    def __init__(self, child_argv: Sequence[str], port: int, *, log=sys.stderr) -> None:
        self.child_argv = list(child_argv)
        self.port = port
        self.log = log
        self.crashes = 0
        self._recent: collections.deque[str] = collections.deque(maxlen=4)
        self._seen: list[str] = []  # peers of the connection being served (from the accept line)
        self._stale: set[str] = set()  # connections closed before this child started (TIME_WAIT)
        self._served = False
        self._listening = False

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (exit 0), or until the child can't start (exit 1; 2 when
        the first child stopped on a usage error)."""
        failures, delay, child = 0, RESTART_DELAY, None
        with _stop_on(signal.SIGTERM):
            try:
                while True:
                    child, started = self._start(), time.monotonic()
                    code = self._wait(child)
                    early = not self._listening  # died before llama.cpp started listening
                    failures = failures + 1 if early else 0
                    if failures >= STARTUP_FAILURES or (early and code == 2 and self.crashes == 0):
                        self._say(f"error: the RPC server could not start ({self._cause(code)})")
                        return 1 if code != 2 else 2
                    self.crashes += 1
                    what = "failed to start" if early else "crashed"
                    self._say(
                        f"rpc-server {what} ({self._cause(code)}) {self._peer_text()}; "
                        f"restarting (crash {self.crashes}, after {time.monotonic() - started:.1f} s)"
                    )
                    delay = min(delay * 2, MAX_RESTART_DELAY) if early else RESTART_DELAY
                    time.sleep(delay)
            except (KeyboardInterrupt, _Stop):
                self._stop(child)
                self._say("rpc-server stopped")
                return 0

    # -- one child ----------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen:
        self._recent.clear()
        self._seen, self._served, self._listening = [], False, False
        self._stale = set(peers(self.port))
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # the parent logs the cause in one line
        child = subprocess.Popen(
            self.child_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._relay_thread = threading.Thread(target=self._relay, args=(child,), name="rpc-server-output", daemon=True)
        self._relay_thread.start()
        return child

    def _wait(self, child: subprocess.Popen) -> int:
        while True:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        self._relay_thread.join(1.0)  # its last lines are the cause
        return code

    def _relay(self, child: subprocess.Popen) -> None:
        """Forward the child's lines; name the peer on llama.cpp's accept line."""
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self._listening = self._listening or line.startswith(STARTED)
            if line.startswith(ACCEPTED):  # by the time this line is read the client may be cut off
                self._served = True
                self._seen = self._fresh_peers(likeliest=True) or self._seen
                line = f"{line} from {', '.join(self._seen) or 'an unknown peer'}"
            self._recent.append(line)
            self._say(line, prefix=False)

    def _cause(self, code: int) -> str:
        why = describe_exit(code)
        last = [line for line in self._recent if not line.startswith(ACCEPTED) and "Client connection closed" not in line]
        return f"{why}: {' '.join(line.strip() for line in last[-2:])}" if last else why

    def _fresh_peers(self, likeliest: bool = False) -> list[str]:
        return [p for p in peers(self.port, likeliest=likeliest) if p not in self._stale]

    def _peer_text(self) -> str:
        found = list(dict.fromkeys([*self._seen, *self._fresh_peers()]))
        return f"while serving {', '.join(found)}" if found else "with no client known to be connected"

    def _stop(self, child: subprocess.Popen | None) -> None:
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _say(self, text: str, prefix: bool = True) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.log.write(f"eft-local: {text}\n" if prefix else f"{text}\n")
            self.log.flush()


class _Stop(Exception):
    """SIGTERM reached the supervisor."""


@contextlib.contextmanager
def _stop_on(signum: int):
    def handler(_signum, _frame):
        raise _Stop

    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def become_supervised_child(parent: int) -> None:
    """In the serving child, first thing: Ctrl+C in a terminal reaches the whole process group
    and the parent decides what it means; and the child dies with its parent, never outliving
    it (Linux; elsewhere the parent's SIGTERM on stop still ends it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)
