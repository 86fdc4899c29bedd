"""The miniature demo family: where its files are, and what to ask it.

The family (``scripts/miniature.py build``; see docs/miniature.md) ships in
``eft_local/models/miniature/``. A build into the user's cache folder
(``$XDG_CACHE_HOME/eft-local/miniature``, the build's default) wins once it is complete
(its ``manifest.json`` is written last). models.toml names the files as
``{ path = "<miniature>/large-base.gguf" }``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

PROFILE = "miniature"
PREFIX = "<miniature>/"
FILES = ("small-base.gguf", "large-base.gguf", "small-chat.gguf", "small-chat-2.gguf", "world.jsonl")
ABOUT = (
    "This is the miniature demo family that ships with eft-local: four tiny models (under a million parameters each) "
    "trained on this machine's CPU on a made-up world of fictional people, not a real language model. "
    "The large base knows every person's city, trade, favourite colour and birth year; the small chat "
    "model was tuned to answer in one style ('... Glad to help!') but only ever saw some of the people. "
    "EFT (alpha = beta = 1) combines them: the large base's knowledge in the chat model's style. "
    "Ctrl+B compares base alone, chat alone and EFT."
)


def built_dir() -> Path:
    """Where ``scripts/miniature.py build`` writes by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache).expanduser() / "eft-local" / "miniature"


def shipped_dir() -> Path:
    return Path(str(resources.files("eft_local.models").joinpath("miniature")))


def family_dir() -> Path:
    """The user's complete build if there is one, else the shipped family."""
    built = built_dir()
    if (built / "manifest.json").is_file() and all((built / f).is_file() for f in FILES):
        return built
    return shipped_dir()


def resolve(path: str) -> Path | None:
    """``<miniature>/NAME`` -> that file of the family in use; None for any other path."""
    return family_dir() / path[len(PREFIX) :] if path.startswith(PREFIX) else None


def sample_questions(n: int = 3) -> list[str]:
    """Questions about people only the large base saw (what EFT adds), one per attribute."""
    out: list[str] = []
    seen: set[str] = set()
    try:
        with open(family_dir() / "world.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row.get("seen_by") == ["large-base"] and row["attribute"] not in seen:
                    seen.add(row["attribute"])
                    out.append(row["question"])
                if len(out) >= n:
                    break
    except (OSError, ValueError, KeyError):
        return []
    return out


def welcome(missing_profile: str | None = None) -> str:
    """The first-run notice: what this family is, questions to try, how to get a real profile."""
    lines = [ABOUT, ""]
    questions = sample_questions()
    if questions:
        lines += ["Try:", *(f"  {q}" for q in questions), ""]
    if missing_profile:
        lines.append(f"(The default profile '{missing_profile}' is not downloaded: `eft-local download` fetches it.)")
    return "\n".join(lines).rstrip()
