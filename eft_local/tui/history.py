"""Chat history in SQLite under the XDG data dir (``PRAGMA user_version`` = schema version)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eft_local.tui.conversation import Conversation, Turn

SCHEMA_VERSION = 2  # 2: chats.system_log (where each system prompt was set)
SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL DEFAULT (datetime('now')),
    system_prompt TEXT NOT NULL DEFAULT '',
    system_log TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS turns (
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    spans TEXT NOT NULL DEFAULT '[]',
    stopped INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (chat_id, idx)
);
"""


def data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "eft-local"


def default_path() -> Path:
    return data_dir() / "history.sqlite"


class HistoryError(Exception):
    """The history file can't be read or written (corrupt, replaced, permissions, disk full)."""


@dataclass
class ChatSummary:
    chat_id: int
    title: str
    updated: str
    n_turns: int


class HistoryStore:
    """Small synchronous store; every call opens its own connection (safe from any thread).

    Every failure of the file (corrupted while the app runs, deleted folder, disk full) is a
    ``HistoryError`` with one line that names the file: the app shows it and goes on."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer eft-local (schema {version})")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(chats)")}
            if "system_log" not in columns:  # schema 1: the log starts empty (the prompt counts from the top)
                db.execute("ALTER TABLE chats ADD COLUMN system_log TEXT NOT NULL DEFAULT '[]'")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection, committed and closed afterwards."""
        try:
            db = sqlite3.connect(self.path)
            try:
                db.execute("PRAGMA foreign_keys = ON")
                with db:
                    yield db
            finally:
                db.close()
        except (sqlite3.Error, OSError) as e:
            raise HistoryError(f"chat history {self.path} is unusable ({e}); move the file away to start a new history") from e

    def save(self, conv: Conversation) -> int:
        """Insert or replace ``conv`` (all turns); sets and returns ``conv.chat_id``."""
        with self._connect() as db:
            if conv.chat_id is None:
                cur = db.execute("INSERT INTO chats (title, created) VALUES (?, ?)", (conv.title, conv.created))
                conv.chat_id = cur.lastrowid
            db.execute(
                "UPDATE chats SET title = ?, system_prompt = ?, system_log = ?, updated = datetime('now') WHERE id = ?",
                (conv.title, conv.system_prompt, json.dumps(conv.system_log), conv.chat_id),
            )
            db.execute("DELETE FROM turns WHERE chat_id = ?", (conv.chat_id,))
            db.executemany(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (conv.chat_id, i, t.role, t.content, json.dumps(t.spans), int(t.stopped), t.info)
                    for i, t in enumerate(conv.turns)
                ],
            )
        return conv.chat_id

    def list(self, limit: int = 200) -> list[ChatSummary]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT c.id, c.title, c.updated, COUNT(t.idx) FROM chats c LEFT JOIN turns t ON t.chat_id = c.id "
                "GROUP BY c.id ORDER BY c.updated DESC, c.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [ChatSummary(*r) for r in rows]

    def load(self, chat_id: int) -> Conversation:
        with self._connect() as db:
            row = db.execute("SELECT created, system_prompt, system_log FROM chats WHERE id = ?", (chat_id,)).fetchone()
            if row is None:
                raise KeyError(chat_id)
            turns = db.execute(
                "SELECT role, content, spans, stopped, info FROM turns WHERE chat_id = ? ORDER BY idx", (chat_id,)
            ).fetchall()
        try:
            return Conversation(
                system_prompt=row[1],
                system_log=[(int(at), str(text)) for at, text in json.loads(row[2])],
                created=row[0],
                chat_id=chat_id,
                turns=[Turn(r, c, [tuple(s) for s in json.loads(sp)], bool(st), info) for r, c, sp, st, info in turns],
            )
        except (ValueError, TypeError) as e:  # a row written by something else
            raise HistoryError(f"chat {chat_id} in {self.path} is damaged ({e})") from e

    def delete(self, chat_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
