"""Where batch rows go (``--output``): checked before any model loads, never replacing what isn't ours.

- absent or ``-``: stdout.
- a regular file or a new path: rows go to ``OUT.partial`` (next to it), renamed to ``OUT``
  only when every row is in, so an interrupted run never leaves a half-written file under
  the final name and a failed run leaves any previous ``OUT`` untouched.
- a symlink is followed: its target gets the partial-then-rename treatment in the target's
  directory; the link itself stays.
- a fifo or a character device (``/dev/null``, a terminal) is written directly, row by row;
  ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` write to that open descriptor.
- anything else (a directory, ``""``, a block device, a socket, a GGUF model file, a
  ``.partial`` name taken by something that isn't a partial result of ours) is refused with
  one line; so is the file the prompts are read from, however it is named (compared by
  device and inode: a hard link, ``/dev/stdin``, ``/proc/self/fd/0``, stdout appending to it).
- ``OUT.partial`` is locked (``flock``) from before the models load until the rename: a second
  run on the same OUT fails at once (exit 2) instead of mixing its rows in.
- a failed write (disk full) cuts the file back to its last whole row and says so in one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from eft_local.batch.prompt_file import json_safe
from eft_local.errors import UserError, unicode_problem

_FD_ALIASES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


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
    source = _prompt_identity(prompt_file)
    if out is None or str(out) == "-":
        _not_the_prompts(_fd_identity(1), source, "standard output")
        return Target("stdout")
    text = os.fspath(out)
    if not text.strip():
        raise UserError("--output is empty: give a file name, or leave --output out to write to stdout")
    fd = _fd_alias(text)
    if fd is not None:
        return _fd_target(text, fd, source)
    if text.endswith(os.sep):
        raise UserError(f"--output names a directory: {text} (give a file name)")
    given = Path(text).expanduser()
    path = Path(os.path.realpath(given))  # a symlink is followed, never replaced
    where = f"{given} (-> {path})" if path != given.absolute() else str(given)
    try:
        st = os.stat(given)  # through /proc/self/fd/N and /dev/stdin links too: the file they open
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"--output {where}: {e.strerror}") from None
    if st is not None:
        _not_the_prompts((st.st_dev, st.st_ino, st.st_mode), source, f"--output {where}")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"--output is a directory: {where} (give a file name inside it)")
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        if not os.access(given, os.W_OK):
            raise UserError(f"--output {where}: permission denied")
        return Target("direct", given if _is_proc_link(given) else path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"--output {where} is not a regular file, fifo or character device; refusing to write to it")
    if _is_proc_link(given):  # /dev/stdin -> a regular file we did not name: never replace it by renaming
        raise UserError(f"--output {where}: give the file's own name, not a descriptor alias of it")
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


Identity = tuple[int, int, int]  # st_dev, st_ino, st_mode


def _prompt_identity(prompt_file: str | os.PathLike | None) -> Identity | None:
    """The file the prompts come from (standard input for ``-``), by device and inode."""
    if prompt_file is None:
        return None
    if str(prompt_file) == "-":
        return _fd_identity(0)
    try:
        st = os.stat(prompt_file)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mode


def _fd_identity(fd: int) -> Identity | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mode


def _not_the_prompts(out: Identity | None, source: Identity | None, where: str) -> None:
    """Writing where the prompts are read from would destroy them (a terminal may be both)."""
    if out is None or source is None or out[:2] != source[:2] or stat.S_ISCHR(out[2]):
        return
    raise UserError(f"{where} is the prompt file itself; write the results elsewhere")


def _fd_target(text: str, fd: int, source: Identity | None) -> Target:
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise UserError(f"--output {text}: file descriptor {fd} is not open") from None
    if mode == os.O_RDONLY:
        raise UserError(f"--output {text}: file descriptor {fd} is open for reading only")
    _not_the_prompts(_fd_identity(fd), source, f"--output {text}")
    return Target("fd", fd=fd)


def _is_proc_link(path: Path) -> bool:
    """``/dev/stdin``, ``/proc/<pid>/fd/N``: a name for an open descriptor, not a file of its own."""
    text = os.path.abspath(path)
    return text in ("/dev/stdin", "/dev/stdout", "/dev/stderr") or bool(re.fullmatch(r"/(dev|proc/[^/]+)/fd/\d+", text))


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
        if stat.S_ISREG(st.st_mode) and _locked(partial):
            raise UserError(
                f"another eft-local run is writing {partial.with_name(partial.name.removesuffix('.partial'))} "
                f"({partial.name} is locked); "
                "wait for it to finish or choose another --output"
            )
        if not stat.S_ISREG(st.st_mode) or not _looks_like_our_rows(partial):
            raise UserError(f"{partial} exists and is not a partial result of eft-local; move it away or choose another --output")
        return
    try:  # can we create it at all? (permissions, read-only file system, name too long)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise UserError(f"cannot write {partial}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(partial)


def _locked(path: Path) -> bool:
    """Does a running eft-local hold this partial's lock?"""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


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
    if not isinstance(row, dict):
        return False
    return (
        ("finish_reason" in row and "token_ids" in row) or "continuations" in row or {"id", "error"} <= row.keys()
    )  # run / score rows


class WriteFailed(UserError):
    """Writing a row failed (disk full, …); the rows before it are whole."""


class Claim:
    """``--output`` checked and, for a regular file, ``OUT.partial`` opened and locked
    (``flock``) before any model loads: a second run writing the same OUT fails at once
    with one line instead of interleaving rows; the lock is held until OUT is renamed."""

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
    def rows(self) -> Iterator[IO[str]]:
        """Where rows are written (``write(row + "\\n")`` per row); see the module docstring."""
        kind = self.target.kind
        if kind in ("stdout", "fd"):
            yield from _to_descriptor(self.target)
        elif kind == "direct":
            yield from _to_device(self.target)
        else:
            yield from self._to_partial()

    def _to_partial(self) -> Iterator[IO[str]]:
        final, partial = self.target.path, self.target.partial
        assert final is not None and self._fd is not None
        try:
            mode = stat.S_IMODE(os.stat(final).st_mode)
        except FileNotFoundError:
            mode = None
        os.ftruncate(self._fd, 0)  # an earlier interrupted run's rows
        self._created = True
        rows = RowFile(self._fd, str(partial), truncate=True)
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
    if target.kind != "file":
        return Claim(target)
    return Claim(target, *_lock_partial(target))


def _lock_partial(target: Target) -> tuple[int, bool]:
    """Open and lock OUT.partial; (fd, whether we created it)."""
    partial = target.partial
    for _ in range(5):
        created = not os.path.lexists(partial)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(partial, flags, 0o644)
        except OSError as e:
            msg = "it is a symlink" if e.errno == errno.ELOOP else e.strerror
            raise UserError(f"cannot write {partial}: {msg}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"another eft-local run is writing {target.path} ({partial.name} is locked); "
                "wait for it to finish or choose another --output"
            ) from None
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
def open_output(out: str | os.PathLike | None, prompt_file: str | os.PathLike | None = None) -> Iterator[IO[str]]:
    """A text stream for the rows; see the module docstring for what each kind of OUT gets."""
    with claim_output(out, prompt_file) as claim, claim.rows() as rows:
        yield rows


class RowFile:
    """Whole rows onto a descriptor with ``os.write``: a failed write (disk full) is cut back
    to the last whole row (``truncate``, for a regular file) and raised as one line."""

    def __init__(self, fd: int, name: str, truncate: bool = False) -> None:
        self.fd, self.name, self.truncate = fd, name, truncate
        self.good = 0  # bytes of whole rows written
        self.rows = 0

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except BrokenPipeError:
            raise
        except OSError as e:
            self._cut_back()
            raise WriteFailed(_write_error(e, self.name, self.rows)) from None
        self.good += len(data)
        self.rows += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass

    def _cut_back(self) -> None:
        if self.truncate:
            try:
                os.ftruncate(self.fd, self.good)
                os.lseek(self.fd, self.good, os.SEEK_SET)
            except OSError:
                pass


def _write_error(e: OSError, name: str, rows: int) -> str:
    kept = f"{rows} whole row(s) written before it are kept" if rows else "no row was written"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"disk full while writing {name}; {kept}: free some space and run again"
    if e.errno == errno.EFBIG:
        return f"file size limit reached while writing {name}; {kept}"
    return f"cannot write {name}: {e.strerror or e}; {kept}"


def _to_descriptor(target: Target) -> Iterator[IO[str]]:
    """Standard output (as Python sees it: tests capture it) or an inherited descriptor."""
    stream = sys.stdout if target.fd in (None, 1) else os.fdopen(os.dup(target.fd), "w", encoding="utf-8")
    name = "standard output" if stream is sys.stdout else f"file descriptor {target.fd}"
    try:
        yield _Checked(stream, name)
        stream.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise UserError("the output was closed by its reader before every row was written") from None
    except OSError as e:
        _silence_stdout()
        raise WriteFailed(_write_error(e, name, 0).split(";")[0]) from None
    finally:
        if stream is not sys.stdout:
            try:
                stream.close()
            except OSError:
                pass


class _Checked:
    """A text stream whose write errors (other than a closed pipe) are one line."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.stream, self.name, self.rows = stream, name, 0

    def write(self, text: str) -> int:
        try:
            n = self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            _silence_stdout()
            raise WriteFailed(_write_error(e, self.name, self.rows)) from None
        self.rows += text.count("\n")
        return n

    def flush(self) -> None:
        self.stream.flush()


def _to_device(target: Target) -> Iterator[IO[str]]:
    """A fifo or a character device: written row by row, never created or truncated."""
    assert target.path is not None
    try:
        fd = os.open(target.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UserError(f"cannot open --output {target.path}: {e.strerror}") from None
    try:
        yield RowFile(fd, str(target.path))
    except BrokenPipeError:
        raise UserError(f"{target.path} was closed by its reader before every row was written") from None
    finally:
        os.close(fd)


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


def _silence_stdout() -> None:
    """After a closed pipe, stop Python's exit-time flush of stdout from printing a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
