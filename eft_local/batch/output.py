"""Where batch rows go (``--output``): checked before any model loads, never replacing what isn't ours.

- absent or ``-``: stdout.
- a regular file or a new path: rows go to ``OUT.partial`` (next to it), renamed to ``OUT``
  only when every row is in, so an interrupted run never leaves a half-written file under
  the final name and a failed run leaves any previous ``OUT`` untouched.
- a symlink is followed: its target gets the partial-then-rename treatment in the target's
  directory; the link itself stays.
- a fifo or a character device (``/dev/null``, a terminal) is written directly, row by row;
  ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` write to that open descriptor.
- anything else (a directory, ``""``, a block device, a socket, the prompt file itself, a
  GGUF model file, a ``.partial`` name taken by something that isn't a partial result of
  ours) is refused with one line.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from eft_local.batch.prompt_file import json_safe
from eft_local.errors import UserError

_FD_ALIASES = {"/dev/stdout": 1, "/dev/stderr": 2, "/proc/self/fd/1": 1, "/proc/self/fd/2": 2}


@dataclass(frozen=True)
class Target:
    kind: str  # "stdout" | "fd" | "direct" | "file"
    path: Path | None = None  # the file written (a symlink's target for "file")
    fd: int | None = None

    @property
    def partial(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".partial")


def _fd_alias(out: str) -> int | None:
    if out in _FD_ALIASES:
        return _FD_ALIASES[out]
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        if out.startswith(prefix) and out[len(prefix) :].isdigit():
            return int(out[len(prefix) :])
    return None


def check_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Target:
    """Decide where rows go, or refuse with one line; creates nothing (call before loading models)."""
    if out is None or str(out) == "-":
        return Target("stdout")
    text = os.fspath(out)
    if not text.strip():
        raise UserError("--output is empty: give a file name, or leave --output out to write to stdout")
    fd = _fd_alias(text)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise UserError(f"--output {text}: file descriptor {fd} is not open") from None
        return Target("fd", fd=fd)
    if text.endswith(os.sep):
        raise UserError(f"--output names a directory: {text} (give a file name)")
    given = Path(text).expanduser()
    path = Path(os.path.realpath(given))  # a symlink is followed, never replaced
    where = f"{given} (-> {path})" if path != given.absolute() else str(given)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"--output {where}: {e.strerror}") from None
    if st is not None and prompt_file is not None and str(prompt_file) != "-":
        try:
            same = os.path.samefile(path, prompt_file)
        except OSError:
            same = False
        if same:
            raise UserError(f"--output {where} is the prompt file itself; write the results elsewhere")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"--output is a directory: {where} (give a file name inside it)")
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        if not os.access(path, os.W_OK):
            raise UserError(f"--output {where}: permission denied")
        return Target("direct", path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"--output {where} is not a regular file, fifo or character device; refusing to write to it")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"output directory does not exist: {parent}")
    if st is not None and _is_gguf(path):
        raise UserError(f"--output {where} is a GGUF model file; refusing to replace it")
    if st is not None and not os.access(path, os.W_OK):
        raise UserError(f"--output {where} is read-only; it would be replaced (chmod it or choose another name)")
    target = Target("file", path)
    _check_partial(target.partial)
    return target


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _check_partial(partial: Path) -> None:
    """OUT.partial must be free, or hold an earlier interrupted run's rows (ours to overwrite)."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"cannot write {partial}: {e.strerror}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode) or not _looks_like_our_rows(partial):
            raise UserError(f"{partial} exists and is not a partial result of eft-local; move it away or choose another --output")
        return
    try:  # can we create it at all? (permissions, read-only file system, name too long)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise UserError(f"cannot write {partial}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(partial)


def _looks_like_our_rows(path: Path) -> bool:
    """Empty, or its first line is one of our rows (an interrupted run's leftovers)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return os.path.getsize(path) == 0
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and "finish_reason" in row and "token_ids" in row


@contextmanager
def open_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Iterator[IO[str]]:
    """A text stream for the rows; see the module docstring for what each kind of OUT gets."""
    target = check_output(out, prompt_file)
    if target.kind in ("stdout", "fd"):
        stream = sys.stdout if target.fd in (None, 1) else os.fdopen(os.dup(target.fd), "w", encoding="utf-8")
        try:
            yield stream
            stream.flush()
        except BrokenPipeError:
            _silence_stdout()
            raise UserError("the output was closed by its reader before every row was written") from None
        finally:
            if stream is not sys.stdout:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        return
    if target.kind == "direct":
        assert target.path is not None
        try:  # no O_CREAT/O_TRUNC: never make or change a file here, only write to the device/fifo
            f = os.fdopen(os.open(target.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0)), "w", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot open --output {target.path}: {e.strerror}") from None
        try:
            yield f
        except BrokenPipeError:
            raise UserError(f"{target.path} was closed by its reader before every row was written") from None
        finally:
            try:
                f.close()
            except OSError:
                pass
        return
    yield from _partial_then_rename(target)


def _partial_then_rename(target: Target) -> Iterator[IO[str]]:
    final, partial = target.path, target.partial
    assert final is not None
    try:
        mode = stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        f = os.fdopen(os.open(partial, flags, 0o644), "w", encoding="utf-8")
    except OSError as e:
        msg = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
        raise UserError(f"cannot write {partial}: {msg}") from None
    try:
        yield f
    except BaseException:
        f.close()
        if partial.stat().st_size == 0:
            partial.unlink()
        else:
            print(f"eft-local: incomplete results kept in {partial}", file=sys.stderr)
        raise
    f.close()
    if mode is not None:
        os.chmod(partial, mode)  # the replaced file's permissions carry over
    os.replace(partial, final)


def row_json(row: dict) -> str:
    """One row as strict JSON (RFC 8259: no NaN/Infinity, which ``json.dumps`` writes by
    default); raw non-ASCII (U+2028 included) is valid JSON and stays readable."""
    try:
        return json.dumps(row, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False)


def _silence_stdout() -> None:
    """After a closed pipe, stop Python's exit-time flush of stdout from printing a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
