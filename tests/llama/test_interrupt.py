"""A Ctrl+C that lands inside a Python callback llama.cpp calls (the log callback, the load
progress callback) is not lost: ctypes prints and drops exceptions raised in callbacks, so
before, a Ctrl+C during a model load printed a traceback and the run went on (exit 0)."""

from __future__ import annotations

import logging

import pytest

from eft_local.llama.adapter import LlamaModel


def test_an_interrupt_in_the_progress_callback_stops_the_load(family):
    calls = []

    def progress(fraction: float) -> None:
        calls.append(fraction)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LlamaModel(family.base, n_ctx=64, progress=progress)
    assert calls == [calls[0]]  # the load stopped at the first report: returning False aborts it


class Interrupting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fired = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired:
            self.fired += 1
            raise KeyboardInterrupt


def test_an_interrupt_in_the_log_callback_is_raised_when_llama_cpp_returns(family, caplog):
    log = logging.getLogger("eft_local.llama")
    handler, level = Interrupting(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)  # llama.cpp's load log reaches Python
    try:
        with pytest.raises(KeyboardInterrupt):
            LlamaModel(family.base, n_ctx=64)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert handler.fired == 1
    LlamaModel(family.base, n_ctx=64).close()  # nothing left pending: the next load is clean
