"""What the server sends clients never names a place on its file system (issue 15 item 6).

Error text can come from anywhere below (llama.cpp wrappers, the OS, Jinja), and some of it
names files. Every message an ``ApiError`` carries is scrubbed here: the paths of the served
model files (registered when the server starts) become their file names, and any other
absolute path becomes its last component. The server's own log keeps the full text.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

_lock = threading.Lock()
_known: dict[str, str] = {}  # private text -> what clients see instead
# An absolute path of two or more components (API routes such as /v1/models are kept as they are).
_ABSOLUTE = re.compile(r"(?<![\w/.~-])(?!/v1/)/(?:[^\s/'\"`:;,()<>\[\]{}]+/)+([^\s/'\"`:;,()<>\[\]{}]*)")


def protect(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Remember files whose location clients must not learn (a path may contain spaces, so
    the exact text is replaced before the generic rule runs)."""
    with _lock:
        for p in paths:
            for form in {str(p), str(Path(p).resolve())}:
                if form.startswith(("/", "\\")) or (len(form) > 2 and form[1] == ":"):
                    _known[form] = Path(form).name


def scrub(text: str) -> str:
    """``text`` with every known file reduced to its name and any other absolute path to its last part."""
    with _lock:
        known = sorted(_known.items(), key=lambda kv: -len(kv[0]))
    for private, public in known:
        text = text.replace(private, public)
    return _ABSOLUTE.sub(lambda m: m.group(1) or "…", text)
