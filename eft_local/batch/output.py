"""Where batch rows go (``--output``): checked before any model loads, never replacing what isn't ours.

- absent or ``-``: stdout; ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``: that open descriptor.
- a regular file or a new name (a symlink: its target): rows go to ``OUT.partial``, locked
  (``flock``) from before the models load and renamed to ``OUT`` when every row is in; an
  interrupted run leaves only the partial, a second run on the same OUT fails at once.
- a fifo or a character device (``/dev/null``, a terminal): written row by row.
- anything else (a directory, ``""``, a block device, a GGUF model file, a ``.partial`` that
  isn't an earlier run's rows, the prompt file itself by device and inode) is refused in one line.
- a failed write (disk full) leaves whole rows only and says so in one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from eft_local.batch.prompt_file import json_safe
from eft_local.errors import UserError, unicode_problem

Identity = tuple[int, int, int]  # st_dev, st_ino, st_mode
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_STD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_NAME = re.compile(r"/(?:dev|proc/self)/fd/(\d+)")
_DESCRIPTOR_LINK = re.compile(r"/dev/std(?:in|out|err)|/(?:dev|proc/[^/]+)/fd/\d+")  # a name for an open descriptor


class WriteFailed(UserError):
    """Writing a row failed (disk full, …); the rows before it are whole."""


@dataclass(frozen=True)
class Target:
    kind: str  # "stdout" | "fd" | "direct" | "file"
    path: Path | None = None  # the file written (a symlink's target for "file")
    fd: int | None = None

    @property
    def partial(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + ".partial")


# -- where the rows may go ----------------------------------------------------------------------
def check_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Target:
    """Decide where rows go, or refuse with one line; creates nothing (call before loading models)."""
    source = _identity(prompt_file)
    if out is None or str(out) == "-":
        _not_the_prompts(_identity(1), source, "standard output")
        return Target("stdout")
    text = os.fspath(out)
    if not text.strip():
        raise UserError("--output is empty: give a file name, or leave --output out to write to stdout")
    alias = _FD_NAME.fullmatch(text)
    if text in _STD or alias:
        return _fd_target(text, _STD.get(text) if alias is None else int(alias[1]), source)
    if text.endswith(os.sep):
        raise UserError(f"--output names a directory: {text} (give a file name)")
    try:
        given = Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser/out.jsonl
        raise UserError(f"--output {text}: cannot expand {text.split('/')[0]} (no such user)") from None
    path = Path(os.path.realpath(given))  # a symlink is followed, never replaced
    where = f"{given} (-> {path})" if path != given.absolute() else str(given)
    try:
        st = os.stat(given)  # through /proc/self/fd/N and /dev/stdin links too: the file they open
    except FileNotFoundError:
        return _file_target(path)
    except OSError as e:
        raise UserError(f"--output {where}: {e.strerror}") from None
    _not_the_prompts((st.st_dev, st.st_ino, st.st_mode), source, f"--output {where}")
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"--output is a directory: {where} (give a file name inside it)")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        if not os.access(given, os.W_OK):
            raise UserError(f"--output {where}: permission denied")
        return Target("direct", given if _DESCRIPTOR_LINK.fullmatch(os.path.abspath(given)) else path)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"--output {where} is not a regular file, fifo or character device; refusing to write to it")
    if _DESCRIPTOR_LINK.fullmatch(os.path.abspath(given)):  # /dev/stdin -> a file we did not name: never rename over it
        raise UserError(f"--output {where}: give the file's own name, not a descriptor alias of it")
    if _starts_with(path, b"GGUF"):
        raise UserError(f"--output {where} is a GGUF model file; refusing to replace it")
    if not os.access(path, os.W_OK):
        raise UserError(f"--output {where} is read-only; it would be replaced (chmod it or choose another name)")
    return _file_target(path)


def _file_target(path: Path) -> Target:
    if not path.parent.is_dir():
        raise UserError(f"output directory does not exist: {path.parent}")
    target = Target("file", path)
    _check_partial(target.partial)
    return target


def _identity(what: int | str | os.PathLike | None) -> Identity | None:
    """A descriptor's or a path's file (``-``: standard input), by device and inode."""
    if what is None:
        return None
    try:
        st = os.fstat(what) if isinstance(what, int) else os.fstat(0) if str(what) == "-" else os.stat(what)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mode


def _not_the_prompts(out: Identity | None, source: Identity | None, where: str) -> None:
    """Writing where the prompts are read from would destroy them (a terminal may be both)."""
    if out is not None and source is not None and out[:2] == source[:2] and not stat.S_ISCHR(out[2]):
        raise UserError(f"{where} is the prompt file itself; write the results elsewhere")


def _fd_target(text: str, fd: int, source: Identity | None) -> Target:
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise UserError(f"--output {text}: file descriptor {fd} is not open") from None
    if mode == os.O_RDONLY:
        raise UserError(f"--output {text}: file descriptor {fd} is open for reading only")
    _not_the_prompts(_identity(fd), source, f"--output {text}")
    return Target("fd", fd=fd)


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except OSError:
        return False


def _check_partial(partial: Path) -> None:
    """OUT.partial must be free (and creatable), or hold an earlier interrupted run's rows."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        try:  # can we create it at all? (permissions, read-only file system, name too long)
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644))
            os.unlink(partial)
        except OSError as e:
            raise UserError(f"cannot write {partial}: {e.strerror or e}") from None
        return
    except OSError as e:
        raise UserError(f"cannot write {partial}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode) and _locked(partial):
        raise _busy(partial)
    if not stat.S_ISREG(st.st_mode) or not _our_rows(partial):
        raise UserError(f"{partial} exists and is not a partial result of eft-local; move it away or choose another --output")


def _busy(partial: Path) -> UserError:
    final = partial.with_name(partial.name.removesuffix(".partial"))
    return UserError(
        f"another eft-local run is writing {final} ({partial.name} is locked); wait for it to finish or choose another --output"
    )


def _locked(path: Path) -> bool:
    """Does a running eft-local hold this partial's lock?"""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _our_rows(path: Path) -> bool:
    """Empty, or its first line is one of our rows (run, score or error: an interrupted run's leftovers)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        row = json.loads(first) if first.strip() else {}
    except (OSError, ValueError):
        return False
    if not first.strip():
        return os.path.getsize(path) == 0
    return isinstance(row, dict) and (
        {"finish_reason", "token_ids"} <= row.keys() or "continuations" in row or {"id", "error"} <= row.keys()
    )


# -- taking it for this run ------------------------------------------------------------------------
class Claim:
    """``--output`` checked and, for a regular file, ``OUT.partial`` opened and locked before any
    model loads; the lock is held until OUT is renamed (``rows``) or the claim is released."""

    def __init__(self, target: Target, fd: int | None = None, created: bool = False) -> None:
        self.target, self._fd, self._created = target, fd, created

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Unlock; an empty OUT.partial this run created goes away."""
        if self._fd is None:
            return
        try:
            if self._created and os.fstat(self._fd).st_size == 0 and _same_inode(self._fd, self.target.partial):
                self.target.partial.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @contextmanager
    def rows(self) -> Iterator[RowWriter]:
        """Where rows are written (``write(row + "\\n")`` per row); see the module docstring."""
        if self.target.kind == "file":
            yield from self._to_partial()
            return
        sink, name, done = _open_sink(self.target)
        try:
            yield RowWriter(sink, name)
        except BrokenPipeError:
            if sink is _stdout():
                _silence_stdout()
            raise UserError(f"{name} was closed by its reader before every row was written") from None
        finally:
            done()

    def _to_partial(self) -> Iterator[RowWriter]:
        final, partial = self.target.path, self.target.partial
        assert final is not None and self._fd is not None
        try:
            mode = stat.S_IMODE(os.stat(final).st_mode)
        except FileNotFoundError:
            mode = None
        os.ftruncate(self._fd, 0)  # an earlier interrupted run's rows
        self._created = True
        rows = RowWriter(self._fd, str(partial), truncate=True)
        try:
            yield rows
        except BaseException as e:
            if rows.good == 0:
                self.release()  # unlinks the empty partial
            elif isinstance(e, KeyboardInterrupt):  # said on the command's one "interrupted" line
                raise KeyboardInterrupt(f"incomplete results kept in {partial}") from None
            elif not isinstance(e, WriteFailed):  # that one already says where the rows are
                print(f"eft-local: incomplete results kept in {partial}", file=sys.stderr)
            raise
        if mode is not None:
            os.fchmod(self._fd, mode)  # the replaced file's permissions carry over
        os.replace(partial, final)
        self._created = False
        self.release()


def claim_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Claim:
    """Check ``--output`` and take it for this run (see ``Claim``); one UserError if we can't."""
    target = check_output(out, prompt_file)
    return Claim(target, *_lock_partial(target)) if target.kind == "file" else Claim(target)


def _lock_partial(target: Target) -> tuple[int, bool]:
    """Open and lock OUT.partial; (fd, whether we created it)."""
    partial = target.partial
    for _ in range(5):
        created = not os.path.lexists(partial)
        try:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f"cannot write {partial}: {'it is a symlink' if e.errno == errno.ELOOP else e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(partial) from None
        except OSError:
            pass  # a file system without locks: carry on as before
        if _same_inode(fd, partial):
            return fd, created
        os.close(fd)  # the holder renamed it to OUT while we waited: lock the new partial
    raise UserError(f"cannot lock {partial}: other runs keep replacing it; choose another --output")


def _same_inode(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def open_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Iterator[RowWriter]:
    """A writer for the rows; see the module docstring for what each kind of OUT gets."""
    with claim_output(out, prompt_file) as claim, claim.rows() as rows:
        yield rows


# -- writing rows ---------------------------------------------------------------------------------
def _stdout() -> IO[bytes] | None:
    """Standard output as Python sees it (tests capture it), as bytes: rows are UTF-8 whatever the locale."""
    return getattr(sys.stdout, "buffer", None)


def _open_sink(target: Target) -> tuple[int | IO[bytes], str, Callable[[], None]]:
    """(where the bytes go, its name for messages, what ends it) for a target that isn't a file."""
    if target.kind == "stdout" or target.fd == 1:
        return _stdout() or sys.stdout.fileno(), "standard output", lambda: None
    if target.kind == "fd":
        fd = os.dup(target.fd)
        return fd, f"file descriptor {target.fd}", lambda: os.close(fd)
    try:
        fd = os.open(target.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"cannot open --output {target.path}: {e.strerror}") from None
    return fd, str(target.path), lambda: os.close(fd)


class RowWriter:
    """Whole rows onto a descriptor (``os.write``) or a byte stream: a failed write is cut back to
    the last whole row (``truncate``, for a regular file) and raised as one line."""

    def __init__(self, sink: int | IO[bytes], name: str, truncate: bool = False) -> None:
        self.sink, self.name, self.truncate = sink, name, truncate
        self.good = 0  # bytes of whole rows written
        self.rows = 0

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        try:
            if isinstance(self.sink, int):
                view = memoryview(data)
                while view:
                    view = view[os.write(self.sink, view) :]
            else:
                self.sink.write(data)
                self.sink.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            self._cut_back()
            if self.sink is _stdout():
                _silence_stdout()
            raise WriteFailed(_write_error(e, self.name, self.rows)) from None
        self.good += len(data)
        self.rows += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass

    def _cut_back(self) -> None:
        if self.truncate:
            try:
                os.ftruncate(self.sink, self.good)
                os.lseek(self.sink, self.good, os.SEEK_SET)
            except OSError:
                pass


def _write_error(e: OSError, name: str, rows: int) -> str:
    kept = f"{rows} whole row(s) written before it are kept" if rows else "no row was written"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"disk full while writing {name}; {kept}: free some space and run again"
    if e.errno == errno.EFBIG:
        return f"file size limit reached while writing {name}; {kept}"
    return f"cannot write {name}: {e.strerror or e}; {kept}"


def _silence_stdout() -> None:
    """After a failed or closed stdout, stop Python's exit-time flush of it from printing a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def row_json(row: dict) -> str:
    """One row as strict JSON (RFC 8259: no NaN/Infinity, which ``json.dumps`` writes by
    default); raw non-ASCII (U+2028 included) is valid JSON and stays readable. Text that isn't
    valid Unicode (only an error row echoes it: its ``error`` says why) is written with each
    lone surrogate as U+FFFD, so the line is UTF-8."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False)
    return text if unicode_problem(text) is None else _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")
