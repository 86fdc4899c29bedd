"""Reading batch prompt files: ``.txt`` (one prompt per line) or ``.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eft_local.errors import UserError
from eft_local.settings import REQUEST_KEYS, ROW_KEYS, SETTINGS, check, check_weights

VALID_ROLES = ("system", "user", "assistant")


@dataclass
class PromptItem:
    id: Any
    prompt: Any  # echoed in the output row: the text, or the messages list
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    error: str | None = None  # a bad prompt among good ones becomes an error row
    overrides: dict[str, Any] = field(default_factory=dict)  # per-prompt settings (JSONL rows)


def read_prompt_file(path: str | Path) -> list[PromptItem]:
    """Parse the whole file up front, so a malformed file fails before any compute.

    ``-`` reads standard input, and a pipe such as ``<(command)`` is read too: JSONL when its
    first non-blank line starts with ``{``, else one prompt per line (a ``.txt``/``.jsonl``
    name decides instead). A UTF-8 byte-order mark at the start is dropped.
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
        content = _decode(path.read_bytes(), str(path))
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None
    jsonl = suffix == ".jsonl" if suffix in (".jsonl", ".txt") else _looks_like_jsonl(content)
    return _parse(content, path.name, jsonl=jsonl, where=str(path))


def _looks_like_jsonl(content: str) -> bool:
    first = next((line for line in content.splitlines() if line.strip()), "")
    return first.lstrip().startswith("{")


def _read_stdin() -> list[PromptItem]:
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("--prompt-file -: pipe the prompts in (e.g. `... --prompt-file - < prompts.jsonl`)")
    content = _decode(sys.stdin.buffer.read(), "standard input")
    return _parse(content, "stdin", jsonl=_looks_like_jsonl(content), where="standard input")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM (Windows editors) is not part of prompt 1
    except UnicodeDecodeError:
        raise UserError(f"prompt file is not UTF-8 text: {where}") from None


def _parse(content: str, name: str, *, jsonl: bool, where: str) -> list[PromptItem]:
    if jsonl:
        items = _read_jsonl(name, content)
    else:
        items = [PromptItem(id=i, prompt=line, text=line) for i, line in enumerate(_lines(content))]
    if not items:
        raise UserError(f"prompt file has no prompts: {where}")
    return items


def _lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line.strip()]


def _read_jsonl(name: str, content: str) -> list[PromptItem]:
    items = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name} line {lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise UserError(f'{name} line {lineno}: expected a JSON object like {{"prompt": "..."}}')
        items.append(_item(obj, len(items), lineno))
    return items


def _item(obj: dict, index: int, lineno: int) -> PromptItem:
    pid = obj.get("id", index)
    try:
        overrides = _overrides(obj, lineno)
    except UserError as e:
        return PromptItem(pid, obj.get("prompt", obj.get("messages")), error=str(e))
    item = _prompt(obj, pid, lineno)
    item.overrides = overrides
    return item


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
            return PromptItem(pid, obj["messages"], error=f"line {lineno}: {err}")
        return PromptItem(pid, obj["messages"], messages=obj["messages"])
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            return PromptItem(pid, obj["prompt"], error=f'line {lineno}: "prompt" must be a non-empty string')
        return PromptItem(pid, obj["prompt"], text=obj["prompt"])
    return PromptItem(pid, None, error=f'line {lineno}: needs a "prompt" string or a "messages" list')


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role", "content"} objects'
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in VALID_ROLES:
            return f'each message needs "role" ({"/".join(VALID_ROLES)}) and a "content" string'
    return None
