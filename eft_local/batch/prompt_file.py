"""Reading batch prompt files: ``.txt`` (one prompt per line) or ``.jsonl``."""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from eft_local.errors import UserError, bad_text_in, unicode_problem
from eft_local.llama.prompts import MESSAGE_ROLES
from eft_local.settings import REQUEST_KEYS, ROW_KEYS, SETTINGS, check, check_weights


@dataclass
class PromptItem:
    id: Any
    prompt: Any  # echoed in the output row: the text, or the messages list
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    error: str | None = None  # a bad prompt among good ones becomes an error row
    overrides: dict[str, Any] = field(default_factory=dict)  # per-prompt settings (JSONL rows)


# Inputs are bounded: a prompt file is read in chunks and refused once it passes these sizes
# (``--prompt-file /dev/zero`` fails in a moment instead of growing until MemoryError).
MAX_FILE_BYTES = 256 << 20
MAX_LINE_BYTES = 16 << 20
MAX_DEPTH = 64  # nesting of a JSONL row (a "messages" row is 3 deep)
_CHUNK = 1 << 20


def read_prompt_file(path: str | Path) -> list[PromptItem]:
    """Parse the whole file up front, so a malformed file fails before any compute.

    ``-`` reads standard input, and a pipe such as ``<(command)`` is read too: JSONL when its
    first non-blank line starts with ``{``, else one prompt per line (a ``.txt``/``.jsonl``
    name decides instead). A UTF-8 byte-order mark at the start is dropped. Lines end at
    ``\n`` or ``\r\n`` only (U+2028, U+0085 or a form feed are part of a prompt). A row
    holding text that isn't valid Unicode (a byte that is not UTF-8, or ``"\ud800"`` in JSON)
    is an error row; the others run.
    """
    if str(path) == "-":
        return _read_stdin()
    path = Path(path)
    if path.is_dir():
        raise UserError(f"prompt file is a directory: {path}")
    if not path.exists():
        raise UserError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    stream = not path.is_file()  # a pipe: <(command), /dev/stdin, a fifo
    if suffix not in (".jsonl", ".txt") and not stream:
        raise UserError(f"prompt file must end in .txt (one prompt per line) or .jsonl, got {path.name}")
    try:
        with open(path, "rb") as f:
            content = read_text(f, str(path))
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None
    jsonl = suffix == ".jsonl" if suffix in (".jsonl", ".txt") else _looks_like_jsonl(content)
    return _parse(content, path.name, jsonl=jsonl, where=str(path))


def read_text(f: IO[bytes], where: str, max_bytes: int = MAX_FILE_BYTES, max_line: int = MAX_LINE_BYTES) -> str:
    """All of ``f`` as text, read in chunks: one UserError as soon as it is binary (NUL bytes
    and bytes that aren't UTF-8 in one chunk), passes ``max_bytes``, or a line passes
    ``max_line`` (``/dev/urandom`` fails in the first chunk, ``/dev/zero`` after one line's
    worth). Other bytes that aren't UTF-8 are kept as ``surrogateescape`` keeps them
    (U+DC80..U+DCFF), so that only their row fails (``errors.unicode_problem``). A leading
    byte-order mark is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    parts: list[str] = []
    total = line_len = newlines = 0
    size = min(_CHUNK, max_line)  # so that a line inside one chunk is never too long
    while chunk := f.read(size):
        total += len(chunk)
        first = chunk.find(b"\n")
        if first >= 0:  # the line in progress ends here
            _check_line(line_len + first, max_line, newlines + 1, where)
            newlines += chunk.count(b"\n")
            line_len = len(chunk) - chunk.rfind(b"\n") - 1
        else:
            line_len += len(chunk)
        _check_line(line_len, max_line, newlines + 1, where)
        if total > max_bytes:
            raise UserError(f"prompt file {where} is larger than {_mib(max_bytes)}; split it into several runs")
        parts.append(decoder.decode(chunk))
        if b"\0" in chunk and unicode_problem(parts[-1]):  # NUL bytes and bytes that aren't UTF-8: binary
            raise UserError(f"prompt file is not UTF-8 text: {where}")
    parts.append(decoder.decode(b"", True))
    return "".join(parts).removeprefix("\ufeff")  # a BOM (Windows editors) is not part of prompt 1


def _check_line(length: int, max_line: int, lineno: int, where: str) -> None:
    if length > max_line:
        raise UserError(
            f"prompt file {where}: line {lineno} is longer than {_mib(max_line)} "
            "(is it a text file? a prompt is one line of UTF-8 text)"
        )


def _mib(n: int) -> str:
    return f"{n >> 20} MiB"


def split_lines(content: str) -> list[str]:
    """Lines ending at ``\n`` or ``\r\n`` and nowhere else (``str.splitlines`` also splits at
    U+2028, U+0085, form feeds, … which JSON strings and prompts may hold)."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _looks_like_jsonl(content: str) -> bool:
    first = next((line for line in split_lines(content) if line.strip()), "")
    return first.lstrip().startswith("{")


def _read_stdin() -> list[PromptItem]:
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("--prompt-file -: pipe the prompts in (e.g. `... --prompt-file - < prompts.jsonl`)")
    content = read_text(sys.stdin.buffer, "standard input")
    return _parse(content, "stdin", jsonl=_looks_like_jsonl(content), where="standard input")


def _parse(content: str, name: str, *, jsonl: bool, where: str) -> list[PromptItem]:
    items = _read_jsonl(name, content) if jsonl else _read_lines(content)
    if not items:
        raise UserError(f"prompt file has no prompts: {where}")
    return items


def _read_lines(content: str) -> list[PromptItem]:
    items = []
    for lineno, line in enumerate(split_lines(content), 1):
        if line.strip():
            problem = unicode_problem(line)
            error = f"line {lineno}: the prompt is not valid Unicode: {problem}" if problem else None
            items.append(PromptItem(id=len(items), prompt=line, text=line, error=error))
    return items


def _read_jsonl(name: str, content: str) -> list[PromptItem]:
    items = []
    for lineno, line in enumerate(split_lines(content), 1):
        if not line.strip():
            continue
        obj = _load_row(name, lineno, line)
        if not isinstance(obj, dict):
            raise UserError(f'{name} line {lineno}: expected a JSON object like {{"prompt": "..."}}')
        items.append(_item(obj, len(items), lineno))
    return items


def _load_row(name: str, lineno: int, line: str) -> Any:
    too_deep = f"{name} line {lineno}: nested deeper than {MAX_DEPTH} levels; a row is a flat object"
    try:
        obj = json.loads(line)
    except RecursionError:
        raise UserError(too_deep) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{name} line {lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    except ValueError:  # an integer of more than 4300 digits (Python's int parsing limit)
        raise UserError(f"{name} line {lineno}: a number with too many digits") from None
    if json_depth(obj) > MAX_DEPTH:
        raise UserError(too_deep)
    return obj


def json_depth(value: Any, stop: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted without recursion up to ``stop + 1``."""
    depth, level = 0, [value]
    while depth <= stop:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/Infinity (which Python's json reads but RFC 8259 has no
    spelling for) replaced by its name as a string, so an echo of it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def _item(obj: dict, index: int, lineno: int) -> PromptItem:
    pid = json_safe(obj.get("id", index))
    bad = bad_text_in(obj)
    if bad:  # echoed with each bad character as U+FFFD (batch.output.row_json); the error says why
        echo = json_safe(obj.get("prompt", obj.get("messages")))
        return PromptItem(pid, echo, error=f"line {lineno}: {bad[0]} is not valid Unicode: {bad[1]}")
    if pid != obj.get("id", index):  # NaN/Infinity: echoed as a string, and the row fails
        return PromptItem(pid, json_safe(obj.get("prompt", obj.get("messages"))), error=f"line {lineno}: {_BAD_ID}")
    try:
        overrides = _overrides(obj, lineno)
    except UserError as e:
        return PromptItem(pid, json_safe(obj.get("prompt", obj.get("messages"))), error=str(e))
    item = _prompt(obj, pid, lineno)
    item.overrides = overrides
    return item


_BAD_ID = '"id" must be a string or a finite number (NaN and Infinity are not JSON)'


def _overrides(obj: dict, lineno: int) -> dict[str, Any]:
    """Settings a row may override (``alpha``, ``temperature``, …, ``weights``), checked; a
    setting that is fixed for the whole run is refused rather than silently ignored."""
    fixed = next((key for key in obj if key in SETTINGS and key not in ROW_KEYS), None)
    if fixed in REQUEST_KEYS:
        raise UserError(f"line {lineno}: {fixed} is a field of HTTP requests (eft-local serve), not of prompt rows")
    if fixed is not None:
        raise UserError(f"line {lineno}: {fixed} can't change per prompt; set it for the run with {SETTINGS[fixed].cli_flag}")
    out = {key: check(key, obj[key], f"line {lineno}: {key}") for key in ROW_KEYS if key in obj}
    if "weights" in obj:
        out["weights"] = check_weights(obj["weights"], f"line {lineno}: weights")
    return out


def _prompt(obj: dict, pid: Any, lineno: int) -> PromptItem:
    if "messages" in obj:
        err = _messages_error(obj["messages"])
        if err:
            return PromptItem(pid, json_safe(obj["messages"]), error=f"line {lineno}: {err}")
        return PromptItem(pid, obj["messages"], messages=obj["messages"])
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            return PromptItem(pid, json_safe(obj["prompt"]), error=f'line {lineno}: "prompt" must be a non-empty string')
        return PromptItem(pid, obj["prompt"], text=obj["prompt"])
    return PromptItem(pid, None, error=f'line {lineno}: needs a "prompt" string or a "messages" list')


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role", "content"} objects'
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in MESSAGE_ROLES:
            return f'each message needs "role" ({"/".join(MESSAGE_ROLES)}) and a "content" string'
    return None
