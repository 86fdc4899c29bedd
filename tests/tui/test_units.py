"""Pure parts of the chat app: history store, conversation, settings, token batching, delta colours."""

from __future__ import annotations

import sqlite3

from eft_local.engine.events import FinishedEvent, GenStats, StatsEvent, TokenEvent
from eft_local.mix.params import SamplingParams
from eft_local.tui import delta
from eft_local.tui.conversation import Conversation, Turn, last_code_block
from eft_local.tui.history import SCHEMA_VERSION, HistoryStore, default_path
from eft_local.tui.settings import ChatSettings
from eft_local.tui.stream import GenerationFinished, TokensArrived, run_stream


def test_history_round_trip_and_schema_version(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "eft-local" / "history.sqlite"
    store = HistoryStore()
    conv = Conversation(system_prompt="sys", turns=[Turn("user", "hi"), Turn("assistant", "yo", [("yo", 1.5)], True, "EFT")])
    chat_id = store.save(conv)
    conv.turns.append(Turn("user", "again"))
    assert store.save(conv) == chat_id  # updates in place
    back = store.load(chat_id)
    assert back.system_prompt == "sys" and [t.content for t in back.turns] == ["hi", "yo", "again"]
    assert back.turns[1].spans == [("yo", 1.5)] and back.turns[1].stopped and back.turns[1].info == "EFT"
    assert [c.title for c in store.list()] == ["hi"]
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.delete(chat_id)
    assert store.list() == []


def test_conversation_messages_and_export():
    conv = Conversation(system_prompt="be kind", turns=[Turn("user", "q"), Turn("assistant", "a", stopped=True)])
    assert conv.messages(extra_user="next") == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "next"},
    ]
    assert Conversation(turns=[Turn("user", "q")]).messages() == [{"role": "user", "content": "q"}]
    md = conv.to_markdown()
    assert "## System" in md and "## User" in md and "*[stopped]*" in md


def test_last_code_block():
    text = "x\n```python\nprint(1)\n```\ny\n```\nsecond\n```\n"
    assert last_code_block(text) == "second\n"
    assert last_code_block("```sh\nls -l\n") == "ls -l\n"  # unfinished fence (stopped answer)
    assert last_code_block("no code") is None


def test_presets_remember_eft_alpha_beta():
    s = ChatSettings.create(SamplingParams(alpha=0.7, beta=1.5), draft_tokens=0, max_tokens=64)
    assert s.draft_tokens == 0 and not s.speculative
    s.preset("base")
    assert (s.sampling.alpha, s.sampling.beta, s.mode) == (0.0, 1.0, "base")
    s.preset("chat")
    assert (s.sampling.alpha, s.sampling.beta) == (1.0, 0.0)
    s.preset("eft")
    assert (s.sampling.alpha, s.sampling.beta) == (0.7, 1.5)
    s.speculative, s.block_size = True, 4
    assert s.config().draft_tokens == 4 and s.config().trace
    s.block_size = None
    assert s.config().draft_tokens is None


class FakeEngine:
    """Yields tokens with a clock that advances 10 ms per token."""

    def __init__(self, clock, n: int) -> None:
        self.clock, self.n = clock, n

    def context_used(self):
        return {"base": (1, 8)}

    def generate(self, prompt, config, rng, cancel=None):
        for i in range(self.n):
            self.clock[0] += 0.01
            yield TokenEvent(i, "" if i == 2 else f"t{i}", delta=9.0 if i == 2 else 0.5)
            if i == 5:
                yield StatsEvent(GenStats(n_tokens=6))
        yield FinishedEvent("length", "", list(range(self.n)), GenStats(n_tokens=self.n))


def test_run_stream_batches_tokens(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("eft_local.tui.stream.time.perf_counter", lambda: clock[0])
    posted = []
    result = run_stream(
        FakeEngine(clock, 20), {}, ChatSettings.create(None, None, 20).config(), 0, lambda: False, posted.append, "me"
    )
    batches = [m for m in posted if isinstance(m, TokensArrived)]
    assert 5 <= len(batches) <= 8  # ~every 30 ms of 200 ms, not one per token
    spans = [s for b in batches for s in b.spans]
    assert "".join(b.text for b in batches) == "".join(t for t, _ in spans)
    assert ("t3", 9.0) in spans and len(spans) == 19  # the empty piece's delta moves to the next piece
    assert isinstance(posted[-1], GenerationFinished) and posted[-1].result is result and posted[-1].target == "me"


def test_delta_styles():
    assert delta.style_for(None) is None and delta.style_for(0.1) is None
    assert delta.style_for(3.0).bgcolor.name == delta.RAISED[2]
    assert delta.style_for(-5.0).bgcolor.name == delta.LOWERED[3]
    text = delta.render([("a", 0.0), ("b", 1.0)])
    assert text.plain == "ab" and len([s for s in text.spans if s.style]) == 1
