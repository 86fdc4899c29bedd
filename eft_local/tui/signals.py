"""Signals that end the app end it like Ctrl+Q: the terminal leaves the alternate screen,
mouse reporting stops, the cursor shows again, the models are freed.

Without handlers SIGTERM/SIGHUP/SIGQUIT kill the process where it stands (Textual never
restores the terminal), and an outside SIGINT raises KeyboardInterrupt at a random point.
The handlers go through the event loop (``loop.add_signal_handler``), so the app exits at a
safe point; a second signal while the app is closing changes nothing (the worker is
already told to stop at its next step).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT") if hasattr(signal, name))


def install(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Call ``on_signal(signum)`` on the running loop for every ending signal; returns the
    undo. Only the main thread can own signal handlers: elsewhere this does nothing."""
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for sig in ENDING_SIGNALS:
        before = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread / Windows
            continue
        previous[sig] = before

    def uninstall() -> None:
        """Back to the handlers from before (an embedding program's, or Python's defaults)."""
        for sig, before in previous.items():
            try:
                loop.remove_signal_handler(sig)
                if before is not None:
                    signal.signal(sig, before)
            except (ValueError, RuntimeError):  # the loop is already closed
                pass
        previous.clear()

    return uninstall
