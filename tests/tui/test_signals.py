"""Signals that end the app restore the terminal; the app's handlers are put back when it ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.tui.conftest import SIZE, no_models_app

# -- item 19: signals that end the app restore the terminal -------------------------------------------
CHILD = "import sys; from eft_local.tui import run_chat; sys.exit(run_chat(paths=None, load_error='no models here'))"
RESTORED = {"alternate screen left": "\x1b[?1049l", "cursor shown": "\x1b[?25h", "mouse reporting off": "\x1b[?1000l"}


class PtyApp:
    """The real app (its own terminal driver and parser) in a pseudo-terminal."""

    def __init__(self, tmp_path: Path) -> None:
        import fcntl
        import os
        import struct
        import subprocess
        import sys
        import termios

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 110, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).parents[2])}
        env.update(XDG_DATA_HOME=str(tmp_path / "data"), XDG_CONFIG_HOME=str(tmp_path / "config"))
        env.pop("TEXTUAL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.master, self.output = master, b""

    def read_until(self, marker: bytes, timeout: float = 30.0) -> bool:
        import os
        import select

        end = time.monotonic() + timeout
        while marker not in self.output and time.monotonic() < end:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    return marker in self.output
                if not chunk:
                    break
                self.output += chunk
        return marker in self.output

    def write(self, data: str) -> None:
        import os

        os.write(self.master, data.encode())

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for the exit, reading all the while (a full terminal buffer blocks the writer)."""
        import os

        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read_until(b"\x00never", timeout=0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the app did not exit within {timeout} s")
        self.read_until(b"\x00never", timeout=0.3)  # what is left
        os.close(self.master)
        return self.proc.returncode

    def after_start(self) -> str:
        text = self.output.decode("utf-8", "replace")
        return text[text.rfind("\x1b[?1049h") :]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT"])
def test_a_signal_that_ends_the_app_restores_the_terminal(tmp_path, sig):
    import os
    import signal

    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)  # mounted: the handlers are in place
    os.kill(app.proc.pid, getattr(signal, sig))
    code = app.finish()
    assert code == 1, f"ended by the signal itself ({code}), not by the app"  # 1: the models had not loaded
    tail = app.after_start()
    missing = [what for what, seq in RESTORED.items() if seq not in tail]
    assert not missing, f"after {sig} the terminal was not restored: {missing}"
    assert "Traceback" not in tail


def test_ctrl_q_ends_the_real_app_inside_an_unterminated_paste(tmp_path):
    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)
    app.write("\x1b[200~a paste whose end got lost")
    time.sleep(0.1)
    app.write("\x11")  # Ctrl+Q
    assert app.finish(timeout=10) == 1
    assert all(seq in app.after_start() for seq in RESTORED.values())


def test_pastes_of_control_characters_never_end_the_real_app(tmp_path):
    """Issue 23 item 13: each control character pasted on its own, then all of them amid text."""
    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)
    for code in range(0x20):
        app.write(f"\x1b[200~{chr(code)}\x1b[201~")
        app.read_until(b"\x00never", timeout=0.05)  # keep reading: a full terminal blocks the app
    app.write("\x1b[200~pasted" + "".join(map(chr, range(1, 0x20))) + "intact\x1b[201~")
    assert app.read_until(b"intact", timeout=10), "the pasted text never showed in the prompt"
    app.read_until(b"\x00never", timeout=1.0)
    assert app.proc.poll() is None, f"a paste ended the app (status {app.proc.returncode})"
    app.write("\x11")  # Ctrl+Q typed on its own still quits
    assert app.finish(timeout=10) == 1
    assert "Traceback" not in app.after_start()


def test_control_keys_typed_outside_a_paste_never_end_the_real_app(tmp_path):
    """Outside a paste each control character is its key (Ctrl+O opens the history, Esc closes a
    screen, ...): none but Ctrl+Q ends the app."""
    app = PtyApp(tmp_path)
    assert app.read_until(b"no models here"), app.output[-2000:]
    time.sleep(0.3)
    for code in (c for c in range(1, 0x20) if c != 0x11):
        app.write(chr(code))
        app.read_until(b"\x00never", timeout=0.1)
    app.read_until(b"\x00never", timeout=1.0)
    assert app.proc.poll() is None, f"a control key ended the app (status {app.proc.returncode})"
    app.write("\x11")
    assert app.finish(timeout=10) == 1
    assert "Traceback" not in app.after_start()


# -- signal handlers put back when the app ends
async def test_signal_handlers_are_put_back_when_the_app_ends():
    import signal

    def mine(signum, frame):  # an embedding program's own handler
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        async with no_models_app().run_test(size=SIZE) as pilot:
            await pilot.pause(0.05)
            assert signal.getsignal(signal.SIGTERM) is not mine  # the app's, while it runs
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
