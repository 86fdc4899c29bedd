"""The conversation the user sees, what each role's template gets, and Markdown export."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

Span = tuple[str, "float | None"]  # generated text piece and its fine-tuning delta


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    content: str
    spans: list[Span] = field(default_factory=list)  # assistant only: per-token text + delta
    stopped: bool = False  # generation was stopped by the user (partial answer)
    info: str = ""  # e.g. "EFT α=1 β=1 greedy · 52 tok · 310 tok/s"


@dataclass
class Conversation:
    system_prompt: str = ""  # the one in effect: every answer from now on gets it first
    turns: list[Turn] = field(default_factory=list)
    chat_id: int | None = None  # row in the history database once saved
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))
    # (number of turns before it, text) for every change of the system prompt: export shows each where it was set
    system_log: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.system_log and self.system_prompt.strip():
            self.system_log = [(0, self.system_prompt)]

    def set_system_prompt(self, text: str) -> None:
        """Change the system prompt before the next turn (two changes in a row: the last counts)."""
        at = len(self.turns)
        if self.system_log and self.system_log[-1][0] == at:
            self.system_log.pop()
        before = self.system_log[-1][1] if self.system_log else ""
        if text != before:
            self.system_log.append((at, text))
        self.system_prompt = text

    @property
    def title(self) -> str:
        first = next((t.content for t in self.turns if t.role == "user"), "new chat")
        first = " ".join(first.split())
        return first[:60] + ("…" if len(first) > 60 else "")

    def messages(self, extra_user: str | None = None) -> list[dict[str, str]]:
        """Chat messages for the engine's templates (system first, if any)."""
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        out += [{"role": t.role, "content": t.content} for t in self.turns]
        if extra_user is not None:
            out.append({"role": "user", "content": extra_user})
        return out

    def last_assistant(self) -> Turn | None:
        return next((t for t in reversed(self.turns) if t.role == "assistant"), None)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"_Exported from eft-local, chat started {self.created}._", ""]
        for i in range(len(self.turns) + 1):
            lines += self._system_markdown(i)
            if i < len(self.turns):
                t = self.turns[i]
                head = "## User" if t.role == "user" else "## Assistant"
                if t.info:
                    head += f" ({t.info})"
                lines += [head, "", t.content.rstrip() + (" *[stopped]*" if t.stopped else ""), ""]
        return "\n".join(lines)

    def _system_markdown(self, at: int) -> list[str]:
        """The system prompt changes made before turn ``at`` (0-based), where they were made."""
        lines: list[str] = []
        for where, text in self.system_log:
            if where != at:
                continue
            if text.strip():
                lines += ["## System", "", text.strip(), ""]
            else:
                lines += ["## System", "", "_(system prompt cleared)_", ""]
        return lines


_FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1\s*$", re.S | re.M)


def last_code_block(text: str) -> str | None:
    """The body of the last fenced code block in ``text`` (an unclosed fence counts too)."""
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1][1]
    tail = re.search(r"^(```|~~~)[^\n]*\n(.*)\Z", text, re.S | re.M)
    return tail.group(2) if tail else None
