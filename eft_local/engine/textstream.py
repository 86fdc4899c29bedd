"""Token bytes -> streamed text: UTF-8 reassembly and stop strings held back until sure."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token bytes, get the text safe to show now.

    Multi-byte characters split across tokens are joined; text that could be the start of
    a stop string is held back until it either completes the stop string (then ``stopped``
    is set and the stop string is dropped) or can no longer match.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._held = ""
        self.text = ""  # everything emitted so far
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        return self._emit(self._held + self._decoder.decode(data))

    def flush(self) -> str:
        """End of generation: release held text (it can no longer become a stop string)."""
        if self.stopped:
            return ""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        self.text += rest
        return rest

    def _emit(self, pending: str) -> str:
        cut = min((i for i in (pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            out = pending[:cut]
        else:
            hold = self._partial_stop_len(pending)
            out, self._held = pending[: len(pending) - hold], pending[len(pending) - hold :]
        self.text += out
        return out

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
