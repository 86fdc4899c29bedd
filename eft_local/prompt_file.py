"""Reading batch prompt files: ``.txt`` (one prompt per line) or ``.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .settings import ROW_KEYS, check, check_weights

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
    """Parse the whole file up front, so a malformed file fails before any compute."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file is not UTF-8 text: {path}") from None
    if path.suffix.lower() == ".jsonl":
        items = _read_jsonl(path, content)
    elif path.suffix.lower() == ".txt":
        items = [PromptItem(id=i, prompt=line, text=line) for i, line in enumerate(_lines(content))]
    else:
        raise UserError(f"prompt file must end in .txt (one prompt per line) or .jsonl, got {path.name}")
    if not items:
        raise UserError(f"prompt file has no prompts: {path}")
    return items


def _lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line.strip()]


def _read_jsonl(path: Path, content: str) -> list[PromptItem]:
    items = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path.name} line {lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path.name} line {lineno}: expected a JSON object like {{\"prompt\": \"...\"}}")
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
    """Settings a row may override (``alpha``, ``temperature``, …, ``weights``), checked."""
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
            return PromptItem(pid, obj["prompt"], error=f"line {lineno}: \"prompt\" must be a non-empty string")
        return PromptItem(pid, obj["prompt"], text=obj["prompt"])
    return PromptItem(pid, None, error=f"line {lineno}: needs a \"prompt\" string or a \"messages\" list")


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "\"messages\" must be a non-empty list of {\"role\", \"content\"} objects"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in VALID_ROLES:
            return f"each message needs \"role\" ({'/'.join(VALID_ROLES)}) and a \"content\" string"
    return None
