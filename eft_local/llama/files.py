"""Whether a path can be a model file: one rule for the library, the loader and the profiles.

No llama.cpp here (the profiles and ``eft-local models`` use it without loading it): a path is
checked with ``stat`` and a read of its first bytes, and every reason is one line, never an
``OSError`` (a name too long for the system, a loop of links, a device, a ``/proc`` file)."""

from __future__ import annotations

import stat
from pathlib import Path

from eft_local.errors import UserError

NO_FILE = "no such file"


def file_problem(path: Path) -> str | None:
    """Why ``path`` can't be a model file (None: a non-empty regular file that opens), without
    raising: a name too long for the system, a directory, a device or a ``/proc`` file (which
    reads as 0 bytes) is one reason, not an OSError."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return NO_FILE
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, EACCES; ValueError: a NUL byte
        return getattr(e, "strerror", None) or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a model file"
    if not stat.S_ISREG(st.st_mode):
        return "a special file (device, fifo or socket), not a model file"
    if st.st_size == 0:
        return "an empty file (0 bytes), not a model file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None


def check_gguf(path: Path) -> None:
    """Fail with one clear line (UserError) unless ``path`` is a readable GGUF file."""
    problem = file_problem(path)
    if problem == NO_FILE:
        raise UserError(f"model file not found: {path}")
    if problem:
        raise UserError(f"model file {path}: {problem}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:  # gone or changed since it was checked
        raise UserError(f"model file {path}: cannot be read ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise UserError(f"not a GGUF model file: {path} (convert it with llama.cpp's convert_hf_to_gguf.py)")
