"""llama.cpp's RPC backend: serve this machine's CPU/GPU, or put a model's layers on other machines.

Everything goes through the ggml libraries that llama-cpp-python ships (``libggml-rpc.so``,
``libggml.so``, ``libggml-base.so`` in ``llama_cpp/lib``), so the protocol is exactly
llama.cpp's ``rpc-server``'s.

Client side, per endpoint (``host:port``), once per process:

1. ``probe``: a TCP connect and the RPC HELLO, with a timeout, *before* ggml sees the
   endpoint. ggml's own client aborts the process when a connect or handshake fails, and
   blocks forever on a server that is busy with another client (an rpc-server serves one
   client at a time): the probe turns all of that into one clear line within seconds.
2. ``ggml_backend_rpc_add_server`` + ``ggml_backend_register``: the server's devices join
   ggml's device list. Registering twice would duplicate them, so endpoints are remembered.
3. Each model gets an explicit ``llama_model_params.devices`` list: its own RPC devices
   (first, as llama.cpp does, to keep transfers low) plus the local GPUs. Once any RPC device
   is registered every model gets an explicit list, so roles without ``--rpc`` stay local.

Faults after loading. ggml's RPC client has no error path: a failed send/recv calls
``GGML_ABORT`` (on its dispatcher thread). So:

- ``check_alive`` runs before every decode of a model with RPC layers: it finds ggml's own
  socket to the server (by peer address, among this process's file descriptors) and peeks at
  it without blocking. A server that closed or reset the connection raises ``RpcServerLost``
  (a ``UserError``) and the decode is never attempted. No network traffic, a few syscalls.
- Found sockets get TCP keepalive and ``TCP_USER_TIMEOUT``, so a server machine that vanishes
  without closing the connection turns into a failed recv in about 30 s instead of a hang.
- A server lost *during* a decode reaches ``GGML_ABORT``; the abort callback installed here
  prints one line naming the lost server(s) and ends the process with ``EXIT_RPC_LOST``
  (rows already written by ``eft-local run`` stay in ``OUT.partial``). It never returns a
  token computed from a broken connection.
- ggml's client also waits for every answer without a timeout and can't be cancelled (a
  stopped or hung server, one that answers our probe and then falls silent). ``bounded`` runs
  each such call (registering, loading, decoding, freeing) on a helper thread and keeps time:
  past its bound, or 2 s after Ctrl+C, the process ends with one line. Bounds: docs/rpc.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from eft_local.errors import UserError
from eft_local.mix.mixture import ROLES, is_role_name

DEFAULT_PORT = 50052
SPEC_SYNTAX = "ROLE=HOST:PORT[,HOST:PORT…]"
PROBE_TIMEOUT = 3.0  # s: our own connect, and the server's answer to our HELLO (each, and in all)
REGISTER_TIMEOUT = 10.0  # s: ggml's own connect, HELLO and device queries once our probe passed
REPLY_TIMEOUT = 30.0  # s: a server's answer to one call (a decode, a freed model; a load step)
TOKEN_ALLOWANCE = 0.25  # s more per token of a decode batch (a long prompt on a slow server)
INTERRUPT_GRACE = 2.0  # s Ctrl+C waits for an RPC call in flight before the process ends
EXIT_INTERRUPTED = 130
EXIT_RPC_LOST = 69  # EX_UNAVAILABLE
BUILD_HINT = (
    "this llama-cpp-python was built without RPC; reinstall it with -DGGML_RPC=ON, e.g. "
    'CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir --force-reinstall llama-cpp-python'
)

_RPC_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_RSP_SIZE = 4 + _CONN_CAPS_SIZE
# ggml_backend_dev_type
DEV_CPU, DEV_GPU, DEV_IGPU = 0, 1, 2


class RpcServerLost(UserError):
    """An RPC server holding a model's layers is gone; that model can't decode any more."""


# -- the libraries -------------------------------------------------------------------------------
@dataclass
class _Libs:
    base: ctypes.CDLL
    ggml: ctypes.CDLL
    rpc: ctypes.CDLL


_libs: _Libs | None = None
_P = ctypes.c_void_p


def lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def _find(name: str) -> Path | None:
    """The file libllama's own dependency entry names (``libggml.so.0``), so that ctypes gets the
    instance llama.cpp already uses. Wheels hold ``.so``/``.so.0`` as separate *copies*, and a
    second copy would have its own device registry and abort callback."""
    for file in (f"lib{name}.so.0", f"lib{name}.so", f"lib{name}.0.dylib", f"lib{name}.dylib", f"{name}.dll", f"lib{name}.dll"):
        if (lib_dir() / file).exists():
            return lib_dir() / file
    return None


def _sig(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)


def _load() -> _Libs:
    """The ggml libraries llama_cpp already loaded (same files, so the same global state)."""
    global _libs
    if _libs is not None:
        return _libs
    import llama_cpp  # noqa: F401  (loads libllama and its ggml libraries first)

    paths = {n: _find(n) for n in ("ggml-base", "ggml", "ggml-rpc")}
    if paths["ggml-rpc"] is None or not supports_rpc():
        raise UserError(BUILD_HINT)
    base, ggml, rpc = (ctypes.CDLL(str(paths[n])) for n in ("ggml-base", "ggml", "ggml-rpc"))
    _sig(rpc, "ggml_backend_rpc_add_server", _P, ctypes.c_char_p)
    _sig(rpc, "ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, _P)
    _sig(ggml, "ggml_backend_register", None, _P)
    _sig(ggml, "ggml_backend_dev_count", ctypes.c_size_t)
    _sig(ggml, "ggml_backend_dev_get", _P, ctypes.c_size_t)
    _sig(ggml, "ggml_backend_dev_by_type", _P, ctypes.c_int)
    _sig(base, "ggml_backend_reg_dev_count", ctypes.c_size_t, _P)
    _sig(base, "ggml_backend_reg_dev_get", _P, _P, ctypes.c_size_t)
    _sig(base, "ggml_backend_dev_type", ctypes.c_int, _P)
    _sig(base, "ggml_backend_dev_name", ctypes.c_char_p, _P)
    _sig(base, "ggml_backend_dev_description", ctypes.c_char_p, _P)
    _sig(base, "ggml_set_abort_callback", _P, _P)
    _libs = _Libs(base, ggml, rpc)
    return _libs


def supports_rpc() -> bool:
    """True when llama-cpp-python was built with -DGGML_RPC=ON."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_rpc()) and _find("ggml-rpc") is not None
    except (ImportError, AttributeError, OSError):  # no llama_cpp, or one too old to know
        return False


def require_rpc() -> _Libs:
    if not supports_rpc():
        raise UserError(BUILD_HINT)
    return _load()


# -- endpoints -------------------------------------------------------------------------------------
def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port). IPv4 addresses and host names (ggml's RPC is IPv4 only)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or ":" in host:
        raise UserError(f"bad RPC endpoint '{text}': expected HOST:PORT, e.g. 10.0.0.5:{DEFAULT_PORT}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"bad RPC endpoint '{text}': port must be a number from 1 to 65535")
    return host, int(port)


def parse_rpc_spec(text: str) -> tuple[str, list[str]]:
    """``base=10.0.0.5:50052,10.0.0.6:50052`` -> ("base", ["10.0.0.5:50052", "10.0.0.6:50052"])."""
    role, sep, servers = text.partition("=")
    role = role.strip()
    if not sep or not role or not servers.strip():
        raise UserError(f"--rpc {text!r}: expected {SPEC_SYNTAX}, e.g. --rpc base=10.0.0.5:{DEFAULT_PORT}")
    if not is_role_name(role):
        raise UserError(f"--rpc {text!r}: unknown role '{role}' (roles: {', '.join(ROLES)}, a delta NAME or NAME.reference)")
    endpoints = [e.strip() for e in servers.split(",")]
    if any(not e for e in endpoints):
        raise UserError(f"--rpc {text!r}: empty server in the list; expected {SPEC_SYNTAX}")
    for e in endpoints:
        try:
            parse_endpoint(e)
        except UserError as err:
            raise UserError(f"--rpc {text!r}: {err}") from None
    return role, endpoints


def canonical(endpoint: str) -> str:
    """``ip:port`` for an endpoint: one name per server, so it is registered (and connected) once."""
    host, port = parse_endpoint(endpoint)
    try:
        ip = socket.gethostbyname(host)
    except (OSError, UnicodeError):  # UnicodeError: not a host name IDNA can spell (a label of 64+, a bad byte)
        raise UserError(f"RPC server {endpoint}: unknown host '{host}'") from None
    return f"{ip}:{port}"


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> tuple[int, int, int]:
    """Connect and do the RPC HELLO; return the server's protocol version.

    Raises UserError with one line when the server is down, unreachable, busy or not an
    RPC server. The connection is then closed (the server just logs it).
    """
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            deadline = time.monotonic() + timeout  # the answer as a whole, however it trickles in
            s.sendall(bytes([_RPC_CMD_HELLO]) + struct.pack("<Q", _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            size = struct.unpack("<Q", _recv_exact(s, 8, deadline))[0]
            if size != _HELLO_RSP_SIZE:
                raise UserError(
                    f"RPC server {endpoint} speaks another protocol version (hello of {size} bytes); "
                    "run an rpc-server from the same llama.cpp as this eft-local"
                )
            rsp = _recv_exact(s, size, deadline)
    except ConnectionRefusedError:
        raise UserError(
            f"RPC server {endpoint}: connection refused (is `eft-local rpc-server --port {port}` running there?)"
        ) from None
    except TimeoutError:
        raise UserError(
            f"RPC server {endpoint}: no answer within {timeout:g} s (host down, firewalled, "
            "or the server is busy with another client: an rpc-server serves one client at a time)"
        ) from None
    except (ConnectionError, EOFError):
        raise UserError(
            f"RPC server {endpoint}: closed the connection during the handshake (not an RPC server, or another version)"
        ) from None
    except OSError as e:
        raise UserError(f"RPC server {endpoint}: {e.strerror or e}") from None
    return rsp[0], rsp[1], rsp[2]


def _recv_exact(s: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# -- client: registering servers, choosing devices ----------------------------------------------------
_registered: dict[str, list[int]] = {}  # canonical endpoint -> its ggml devices
_versions: dict[str, tuple[int, int, int]] = {}
_lock = threading.Lock()


def attach(endpoints: Iterable[str]) -> list[str]:
    """Make sure each server is up and registered with ggml; return canonical endpoints.

    A server this process is not connected to is probed first (see module docs); one it is
    connected to is checked with ``check_alive`` (a probe would wait behind our own connection).
    """
    require_rpc()
    result: list[str] = []
    for ep in dict.fromkeys(canonical(e) for e in endpoints):
        with _lock:
            if ep in _registered and _socket_fd(ep) is not None:
                check_alive([ep])
            else:
                _versions[ep] = probe(ep)
            if ep not in _registered:
                _register(ep)
        result.append(ep)
    return result


def _register(ep: str) -> None:
    libs = require_rpc()
    install_abort_handler()

    def add() -> list[int] | None:  # ggml connects, says HELLO and asks for the devices
        reg = libs.rpc.ggml_backend_rpc_add_server(ep.encode())
        if not reg:
            return None
        libs.ggml.ggml_backend_register(reg)
        return [libs.base.ggml_backend_reg_dev_get(reg, i) for i in range(libs.base.ggml_backend_reg_dev_count(reg))]

    devices = bounded(add, [ep], "registering its devices", REGISTER_TIMEOUT)
    if devices is None:
        raise UserError(f"RPC server {ep} reports no devices")
    _registered[ep] = devices


def registered() -> dict[str, list[int]]:
    return {ep: list(devs) for ep, devs in _registered.items()}


def local_gpus() -> list[int]:
    """This machine's own GPU devices (iGPUs when there is no discrete one); never RPC ones."""
    if _libs is None:
        return []
    remote = {d for devs in _registered.values() for d in devs}
    devs = [_libs.ggml.ggml_backend_dev_get(i) for i in range(_libs.ggml.ggml_backend_dev_count())]
    devs = [d for d in devs if d not in remote]
    for kind in (DEV_GPU, DEV_IGPU):
        found = [d for d in devs if _libs.base.ggml_backend_dev_type(d) == kind]
        if found:
            return found
    return []


def has_local_gpu() -> bool:
    """A GPU (or iGPU) on this machine. RPC-enabled builds report GPU offload support even on a
    CPU-only machine (the RPC backend is a "GPU"), so ask ggml for real local devices there."""
    import llama_cpp

    if not supports_rpc():
        return bool(llama_cpp.llama_supports_gpu_offload())
    _load()
    return bool(local_gpus())


def model_devices(endpoints: Sequence[str]) -> ctypes.Array | None:
    """The NULL-terminated ``devices`` array for a model using ``endpoints`` (canonical).

    None (llama.cpp's default: every GPU-like device) while no RPC server is registered in
    this process; otherwise an explicit list so that other roles never land on RPC devices.
    """
    if not _registered:
        return None
    devs = [d for ep in endpoints for d in _registered[ep]] + local_gpus()
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None)


def describe(endpoints: Sequence[str]) -> str:
    """Where a model runs, for load messages: 'local' or 'rpc 10.0.0.5:50052 + local'."""
    return "local" if not endpoints else "rpc " + ", ".join(endpoints) + " + local"


# -- liveness ----------------------------------------------------------------------------------------
_fd_cache: dict[str, int] = {}
_RESET = ("reset",)  # _peer's answer for a socket whose connection is gone (ENOTCONN)


def _peer(fd: int):
    s = socket.socket(fileno=fd)
    try:
        if s.family != socket.AF_INET or s.type != socket.SOCK_STREAM:
            return None
        return s.getpeername()[:2]
    except OSError:
        return _RESET
    finally:
        s.detach()  # the fd is ggml's: never close it


def _fds() -> list[int]:
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(n) for n in os.listdir(d) if n.isdigit()]
        except OSError:
            continue
    return []


def _socket_fd(ep: str) -> int | None:
    """ggml's connection to ``ep`` among our file descriptors, or None (not connected now).

    A remembered descriptor whose connection was reset (no peer any more) is still returned:
    ggml has not closed it, and ``_closed`` reports it dead.
    """
    host, port = parse_endpoint(ep)
    fd = _fd_cache.get(ep)
    if fd is not None and _is_socket(fd) and _peer(fd) in ((host, port), _RESET):
        return fd
    _fd_cache.pop(ep, None)
    for fd in _fds():
        if _is_socket(fd) and _peer(fd) == (host, port):
            _fd_cache[ep] = fd
            _tune(fd)
            return fd
    return None


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _tune(fd: int) -> None:
    """Keepalive + user timeout: a vanished server host fails ggml's recv in ~30 s, not never."""
    s = socket.socket(fileno=fd)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 30000)):
            if hasattr(socket, name):
                s.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass
    finally:
        s.detach()


def _closed(fd: int) -> bool:
    """Has the peer closed or reset this connection? Never blocks, reads nothing."""
    s = socket.socket(fileno=fd)
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        s.detach()


def lost(endpoints: Iterable[str]) -> list[str]:
    """Endpoints whose connection is known dead (not connected at all counts as fine)."""
    dead = []
    for ep in endpoints:
        fd = _socket_fd(ep)
        if fd is not None and _closed(fd):
            dead.append(ep)
    return dead


def check_alive(endpoints: Sequence[str], what: str = "") -> None:
    """Raise RpcServerLost if a server holding these layers dropped its connection."""
    dead = lost(endpoints)
    if dead:
        for_what = f" (layers of {what})" if what else ""
        raise RpcServerLost(
            f"RPC server {', '.join(dead)}{for_what} closed the connection; "
            "restart it, then eft-local (this process can't use that server again)"
        )


def report_lost() -> bool:
    """After a batch run: print one line and return True if a server was lost along the way."""
    dead = lost(_registered)
    if dead:
        print(
            f"eft-local: error: RPC server {', '.join(dead)} was lost during the run; the prompt in flight and "
            f"all later ones are error rows (exit status {EXIT_RPC_LOST})",
            file=sys.stderr,
        )
    return bool(dead)


# -- bounded calls into ggml's RPC client -------------------------------------------------------------
T = TypeVar("T")


class _Call:
    """One blocking C call, run on a helper thread so that its caller can keep time and take Ctrl+C."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the caller
            self.error = e
        finally:
            self.done.set()


_calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
_idle_helpers = 0
_helpers_lock = threading.Lock()


def _helper() -> None:
    global _idle_helpers
    while True:
        call = _calls.get()
        with _helpers_lock:
            _idle_helpers -= 1
        call.run()
        with _helpers_lock:
            _idle_helpers += 1


def _submit(call: _Call) -> None:
    global _idle_helpers
    with _helpers_lock:
        if _idle_helpers == 0:
            _idle_helpers += 1
            threading.Thread(target=_helper, name="rpc-call", daemon=True).start()
    _calls.put(call)


def bounded(
    fn: Callable[[], T],
    endpoints: Sequence[str],
    what: str,
    timeout: float,
    *,
    last_progress: Callable[[], float] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> T:
    """Run ``fn``, a blocking ggml call that waits on RPC servers, with a bound and with Ctrl+C.

    ggml's RPC client waits for every answer without a timeout and cannot be cancelled, so
    the call runs on a helper thread while this one keeps time. No answer within ``timeout``
    seconds (counted from ``last_progress()`` when given: a long load that keeps moving is
    fine) ends the process with one line and ``EXIT_RPC_LOST``. Ctrl+C (main thread) calls
    ``on_interrupt`` (a way to cancel cleanly, if there is one), waits ``INTERRUPT_GRACE``
    seconds for the call, then re-raises; a call still stuck ends the process with one line.
    On another thread the same happens once the main thread has ended (the process is exiting).
    """
    if sys.is_finalizing():  # helper threads no longer run at interpreter exit (a model freed by __del__)
        return fn()
    call = _Call(fn)
    _submit(call)
    start = time.monotonic()
    on_main = threading.current_thread() is threading.main_thread()
    try:
        while not call.done.wait(0.05):
            if not on_main and not threading.main_thread().is_alive():
                # the main thread has ended (a front end shutting down after Ctrl+C) and the
                # interpreter waits for this thread: treat it as Ctrl+C, don't hold the exit up
                _interrupted(call, endpoints, what, on_interrupt)
                continue
            since = max(start, last_progress()) if last_progress else start
            if time.monotonic() - since > timeout:
                _give_up(
                    f"RPC server {', '.join(endpoints)} gave no answer within {timeout:g} s while {what} "
                    "(server stopped, overloaded, or the network is down); llama.cpp's RPC client cannot "
                    f"cancel a call, so eft-local stops here (exit status {EXIT_RPC_LOST}; a batch run keeps its finished rows in OUT.partial)",
                    EXIT_RPC_LOST,
                )
    except KeyboardInterrupt:
        _interrupted(call, endpoints, what, on_interrupt)
        raise
    if call.error is not None:
        raise call.error
    return call.result  # type: ignore[return-value]


def _interrupted(call: _Call, endpoints: Sequence[str], what: str, on_interrupt: Callable[[], None] | None) -> None:
    """Ctrl+C during a call: give it a moment to finish (then the caller re-raises), else stop."""
    try:
        if on_interrupt is not None:
            on_interrupt()
        if call.done.wait(INTERRUPT_GRACE):
            return
    except KeyboardInterrupt:  # a second Ctrl+C: no more waiting
        pass
    _give_up(
        f"interrupted while waiting for RPC server {', '.join(endpoints)} ({what}); stopped without waiting "
        f"for it (exit status {EXIT_INTERRUPTED})",
        EXIT_INTERRUPTED,
    )


def _give_up(line: str, code: int) -> None:
    """End the process now: a ggml call is stuck on another thread, so no normal exit is safe
    (interpreter shutdown would run ggml's destructors under it)."""
    _restore_terminal()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"eft-local: error: {line}\n" if code != EXIT_INTERRUPTED else f"eft-local: {line}\n")
        sys.stderr.flush()
    os._exit(code)


def decode_timeout(n_tokens: int) -> float:
    """The bound on one decode over RPC: an answer, plus compute time for each token."""
    return REPLY_TIMEOUT + TOKEN_ALLOWANCE * n_tokens


# -- fatal errors inside ggml ----------------------------------------------------------------------------
_ABORT_CB = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_abort_handler = None


def _on_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    if "ggml-rpc" not in text:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        return  # not ours: ggml aborts as it always does
    dead = lost(_registered) or list(_registered)
    why = text.split(": ", 1)[-1].strip()
    _restore_terminal()
    if "handshake" in why or "connect" in why:  # a (re)connection inside ggml failed
        versions = "; ".join(f"{ep} speaks RPC v{'.'.join(map(str, v))}" for ep, v in _versions.items())
        hint = (
            "run an rpc-server from the same llama.cpp version as this eft-local"
            if "handshake" in why
            else "is the server still running?"
        )
        sys.stderr.write(
            f"eft-local: error: cannot use RPC server: {why}{f' ({versions})' if versions else ''}; "
            f"{hint} (exit status {EXIT_RPC_LOST})\n"
        )
    else:
        sys.stderr.write(
            f"eft-local: error: lost RPC server {', '.join(dead)} during a decode ({why}); "
            "llama.cpp's RPC client cannot recover from this, so eft-local stops here"
            f" (exit status {EXIT_RPC_LOST}; finished batch rows are in OUT.partial)\n"
        )
    sys.stderr.flush()
    os._exit(EXIT_RPC_LOST)


def _restore_terminal() -> None:
    """Best effort before os._exit: flush stdout and undo a full-screen app's terminal modes
    (alternate screen, hidden cursor, mouse reporting, raw input) so the error line is readable."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError, ImportError, AttributeError):
        if not sys.stderr.isatty():
            return
        import termios

        sys.stderr.write("\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?25h\x1b[?1049l\n")
        fd = sys.__stdin__.fileno()
        attrs = termios.tcgetattr(fd)
        attrs[0] |= termios.ICRNL
        attrs[1] |= termios.OPOST
        attrs[3] |= termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def install_abort_handler() -> None:
    """Route ggml aborts coming from the RPC client to one clear line and a clean exit."""
    global _abort_handler
    if _abort_handler is None:
        _abort_handler = _ABORT_CB(_on_abort)
        _load().base.ggml_set_abort_callback(ctypes.cast(_abort_handler, ctypes.c_void_p))


# -- server ------------------------------------------------------------------------------------------------
def server_devices() -> list[int]:
    """What an rpc-server offers: this machine's GPUs, else its CPU (as llama.cpp's rpc-server)."""
    libs = require_rpc()
    devs = local_gpus()
    if not devs:
        cpu = libs.ggml.ggml_backend_dev_by_type(DEV_CPU)
        devs = [cpu] if cpu else []
    if not devs:
        raise UserError("no ggml device to serve (not even a CPU backend)")
    return devs


def device_names(devs: Sequence[int]) -> list[str]:
    libs = require_rpc()
    return [f"{libs.base.ggml_backend_dev_name(d).decode()} ({libs.base.ggml_backend_dev_description(d).decode()})" for d in devs]


def check_bindable(host: str, port: int) -> str:
    """Resolve ``host`` to the IPv4 address ggml needs and bind once in Python, for a precise
    error (ggml only says 'Failed to create server socket'). Returns the address."""
    try:
        ip = socket.gethostbyname(host)
    except (OSError, UnicodeError):
        raise UserError(f"--host {host}: not an IPv4 address or known host name") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            raise UserError(f"cannot listen on {ip}:{port}: {e.strerror or e}") from None
    return ip


def start_server(host: str, port: int, *, threads: int, cache_dir: str | None, devices: Sequence[int]) -> None:
    """Serve until the process ends (blocking C call; ggml prints its own banner)."""
    libs = require_rpc()
    arr = (ctypes.c_void_p * len(devices))(*devices)
    cache = cache_dir.encode() if cache_dir else None
    libs.rpc.ggml_backend_rpc_start_server(
        f"{host}:{port}".encode(), cache, threads, len(devices), ctypes.cast(arr, ctypes.c_void_p)
    )
