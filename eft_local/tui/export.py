"""F4: the chat as a Markdown file, written where it can be (never over an existing file)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from eft_local.tui.conversation import Conversation


@dataclass(frozen=True)
class Notice:
    """What the app tells the user after an export."""

    message: str
    severity: str = "information"
    timeout: float | None = None


def export_folders() -> list[Path | str]:
    """Where F4 may write: the working directory, else home, else the temp directory.
    A str in the list says why the working directory is unusable."""
    folders: list[Path | str] = []
    try:
        folders.append(Path.cwd())
    except OSError as e:  # deleted while the app runs
        folders.append(f"the working directory is gone ({e.strerror or e})")
    folders += [Path.home(), Path(tempfile.gettempdir())]
    return folders


def write_new(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to a new file in ``folder`` (never over an existing one)."""
    stem, suffix = name.rsplit(".", 1)
    for i in range(100):
        path = folder / (name if i == 0 else f"{stem}-{i}.{suffix}")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            continue
        return path
    raise OSError(f"too many exports named {stem}-*.{suffix}")


def export_chat(conv: Conversation) -> Notice:
    """Write ``conv`` to the first folder that takes it; the notice says where, or why nowhere."""
    name = f"eft-chat-{datetime.now():%Y%m%d-%H%M%S}.md"
    text = conv.to_markdown()
    problem = None
    for folder in export_folders():
        if isinstance(folder, str):  # why the working directory can't be used
            problem = folder
            continue
        try:
            path = write_new(folder, name, text)
        except OSError as e:
            problem = problem or f"can't write to {folder}: {e.strerror or e}"
            continue
        if problem:
            return Notice(f"{problem}; exported to {path} instead", "warning", 10)
        return Notice(f"exported to {path}")
    return Notice(
        f"could not export: {problem}; free some space or fix the permissions, or copy the answer with Ctrl+Y", "error", 10
    )
