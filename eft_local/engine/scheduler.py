"""Many generations at once over one EftEngine: continuous batching of speculative EFT.

Each generation (``generation.Generation``) is a coroutine that yields the evaluations it needs next
(``generation.Eval``) and owns one sequence id in every context. A tick of the scheduler
gathers the outstanding requests of all live sequences and runs them grouped by model, one
``eval_many`` (one ``llama_decode``) per model, then hands each sequence its rows back.

Verification is synchronised: a tick with any *light* request (a drafter step of one
token: draft, first row of a round, bonus row) runs only those, so drafters draft for every
sequence together while the heavy requests (verification blocks, prompt chunks) wait; once
every sequence has drafted, each model verifies all blocks — and prefills newcomers'
prompt chunks — in one decode. Acceptance, resampling and rollback stay per sequence (the
same code as a lone generation, with its own uniforms), so every output is what it is
alone, up to llama.cpp rounding a batch differently (a near-tie may flip).

When a generation ends (stop, length, error, cancel) its sequence is cleared in every
context and the slot takes the next submitted job in the same tick.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.draft_control import batch_k
from eft_local.engine.eft_engine import EftEngine
from eft_local.engine.events import Event, FinishedEvent, GenStats
from eft_local.engine.generation import Eval, Generation
from eft_local.errors import UserError
from eft_local.llama.adapter import LlamaModel

# Cost of a b-token decode relative to one token: 1 + jump + growth·(b − 1) (draft_control.
# batch_cost). A CPU is compute-bound after a few tokens — measured on this project's 2-core
# machine, f32 synthetic base: 1, 2.6, 3.8, 5.5 for b = 1, 4, 9, 17 — a GPU not for dozens.
CPU_COST, GPU_COST = (0.2, 0.9), (0.01, 0.0)  # (growth, jump)


def default_cost(engine: EftEngine) -> tuple[float, float]:
    from eft_local.llama.rpc import has_local_gpu

    on_gpu = any(m.n_gpu_layers != 0 for m in engine.models.values()) and has_local_gpu()
    return GPU_COST if on_gpu else CPU_COST


class SeqView:
    """One sequence of a multi-sequence model, as the cache a generation sees."""

    def __init__(self, model: LlamaModel, seq: int) -> None:
        self.model = model
        self.seq = seq

    @property
    def n_past(self) -> int:
        return len(self.model.seq_tokens[self.seq])

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def rollback(self, n: int) -> None:
        self.model.rollback_seq(self.seq, n)


@dataclass(eq=False)  # identity: a ticket is one submitted generation
class Ticket:
    """A submitted generation: its events arrive on ``events`` (thread-safe), the last one a
    FinishedEvent (also kept as ``finished``). ``cancel()`` ends it at its next round; one
    cancelled while it waits (``user_cancel`` says so) ends "cancelled" without ever taking a
    sequence. ``started``: it took a sequence."""

    prompt: Mapping[str, list[int]]
    config: GenerationConfig
    rng: np.random.Generator
    user_cancel: Callable[[], bool] | None = None
    tag: Any = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    finished: FinishedEvent | None = None
    started: bool = False
    _cancelled: bool = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled or bool(self.user_cancel and self.user_cancel())

    @property
    def done(self) -> bool:
        return self.finished is not None

    def stream(self) -> Iterator[Event]:
        """Events as they come (blocks; for a consumer in another thread than the scheduler)."""
        while True:
            ev = self.events.get()
            yield ev
            if isinstance(ev, FinishedEvent):
                return


@dataclass(eq=False)
class _Slot:
    seq: int
    ticket: Ticket
    run: Generation
    gen: Any
    reqs: list[Eval]


class Scheduler:
    """Continuous batching of up to ``n_seq`` generations over ``engine`` (loaded with
    ``n_seq`` sequences per context). Drive it from one thread: ``step`` / ``run_all``;
    ``submit`` may be called from any thread."""

    def __init__(
        self,
        engine: EftEngine,
        n_seq: int | None = None,
        prefill_chunk: int | None = None,
        cost: tuple[float, float] | None = None,
    ) -> None:
        cap = min(m.n_seq for m in engine.models.values())
        n_seq = cap if n_seq is None else n_seq
        if not 1 <= n_seq <= cap:
            raise UserError(f"the engine's contexts hold {cap} sequence(s); can't run {n_seq} at once")
        batch = min(m.n_batch for m in engine.models.values())
        self.engine = engine
        self.n_seq = n_seq
        # None: a newcomer's prompt goes in n_batch chunks, each in a decode of its own within
        # the tick (the shapes of a lone run, so the same rounding); a number: chunks of that
        # size join the round's batch (fewer decodes, but a batch rounds a little differently).
        self.solo_prefill = prefill_chunk is None
        self.prefill_chunk = batch if prefill_chunk is None else max(1, min(prefill_chunk, batch))
        self.growth, self.jump = default_cost(engine) if cost is None else cost
        self._waiting: deque[Ticket] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._slots: dict[int, _Slot] = {}
        self.round_k = 1
        self.ticks = 0
        self.decodes = 0

    # -- public API -------------------------------------------------------------------------
    def submit(
        self,
        prompt: Mapping[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
        tag: Any = None,
    ) -> Ticket:
        """Queue a generation; it starts when a sequence is free (same tick if one is)."""
        ticket = Ticket(prompt, config, rng, cancel, tag)
        with self._lock:
            self._waiting.append(ticket)
        self._wake.set()
        return ticket

    def run_forever(self, stop: threading.Event, idle_wait: float = 0.1) -> None:
        """Server mode, in the one thread that owns the engine: tick while there is work,
        sleep until ``submit`` brings more; returns once ``stop`` is set."""
        while not stop.is_set():
            if not self.busy:
                self._wake.wait(idle_wait)
                self._wake.clear()
                continue
            self.step()

    @property
    def busy(self) -> bool:
        return bool(self._slots or self._waiting)

    def step(self) -> list[Ticket]:
        """One tick: admit waiting jobs, run one batch per model, advance every sequence that
        was served. Returns the tickets that finished during this tick."""
        done: list[Ticket] = []
        self._admit(done)
        served = self._served()
        if not served:
            return done
        self.ticks += 1
        results, failed = self._evaluate(served)
        if not served[0].reqs[0].light:
            self._plan_round()
        for slot in served:
            self._advance(slot, results.get(slot), failed.get(slot), done)
        self._admit(done)
        return done

    def run_all(
        self, jobs: Iterable[tuple[Any, Callable[[], tuple[Mapping[str, list[int]], GenerationConfig, np.random.Generator]]]]
    ) -> Iterator[tuple[Any, FinishedEvent]]:
        """Batch mode: ``jobs`` yields (tag, make) pairs, pulled only when a sequence is free;
        ``make()`` returns (prompt, config, rng) or raises UserError (then that job finishes
        as an error at once). Yields (tag, FinishedEvent) in completion order."""
        it = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(self._slots) + len(self._waiting) < self.n_seq:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                tag, make = nxt
                try:
                    prompt, config, rng = make()
                except UserError as e:
                    yield tag, _error_event(e)
                    continue
                self.submit(prompt, config, rng, tag=tag)
            if not self.busy:
                return
            for t in self.step():
                yield t.tag, t.finished

    def kv_used(self) -> int:
        """Cells in use across every context and sequence, as llama.cpp reports them (0 when idle)."""
        return sum(m.seq_pos_max(s) + 1 for m in self.engine.models.values() for s in range(m.n_seq))

    # -- one tick ---------------------------------------------------------------------------
    def _admit(self, done: list[Ticket]) -> None:
        """Free sequences take waiting jobs; a job that fails before its first request (a bad
        prompt or setting) finishes at once and the sequence takes the next one."""
        self._drop_cancelled(done)
        free = [s for s in range(self.n_seq) if s not in self._slots]
        while free:
            with self._lock:
                if not self._waiting:
                    return
                ticket = self._waiting.popleft()
            seq = free[0]
            views = {name: SeqView(m, seq) for name, m in self.engine.models.items()}
            try:
                run = Generation(
                    self.engine, ticket.prompt, ticket.config, ticket.rng, ticket.cancelled, views, lambda: self.round_k
                )
            except UserError as e:
                self._finish_unstarted(ticket, _error_event(e), done)
                continue
            ticket.started = True
            slot = _Slot(seq, ticket, run, run.steps(self.prefill_chunk, self.solo_prefill), [])
            self._advance(slot, None, None, done)
            if slot.seq in self._slots:
                free.pop(0)

    def _served(self) -> list[_Slot]:
        """This tick's sequences: those with light (drafter) steps if any, else all."""
        live = [s for s in self._slots.values() if s.reqs]
        light = [s for s in live if s.reqs[0].light]
        return light or live

    def _evaluate(self, served: list[_Slot]) -> tuple[dict[_Slot, list[np.ndarray]], dict[_Slot, BaseException]]:
        """One eval_many per model over the served sequences' requests."""
        by_model: dict[str, list[tuple[_Slot, int, Eval]]] = defaultdict(list)
        for slot in served:
            for j, r in enumerate(slot.reqs):
                by_model[r.name].append((slot, j, r))
        results = {slot: [None] * len(slot.reqs) for slot in served}
        failed: dict[_Slot, BaseException] = {}
        for name, items in by_model.items():
            for group, rows, exc in self._eval_model(name, items):
                for (s, j, _), row in zip(group, rows or [None] * len(group)):
                    if exc is not None:
                        failed[s] = exc
                    else:
                        results[s][j] = row
        return results, failed

    def _eval_model(self, name: str, items: list[tuple[_Slot, int, Eval]]):
        """One eval_many for the model (solo prompt chunks first, each alone); if llama.cpp
        refuses the batch, each request alone, so only the sequence that fails ends as an
        error (rows of decodes before the model's last one are copies)."""
        model = self.engine.models[name]
        solo = [it for it in items if it[2].solo]
        items = [it for it in items if not it[2].solo]
        out = [self._eval_alone(model, it) for it in solo]
        if items:
            out += self._eval_batch(model, items)
        return out

    def _eval_alone(self, model: LlamaModel, item: tuple[_Slot, int, Eval]):
        s, _, r = item
        try:
            self.decodes += 1
            return [item], [model.eval_many([(s.seq, r.tokens, r.n_logits)])[0].copy()], None
        except (UserError, RuntimeError) as exc:
            return [item], None, exc

    def _eval_batch(self, model: LlamaModel, items: list[tuple[_Slot, int, Eval]]):
        try:
            self.decodes += 1
            return [(items, model.eval_many([(s.seq, r.tokens, r.n_logits) for s, _, r in items]), None)]
        except (UserError, RuntimeError) as exc:
            if len(items) == 1:
                return [(items, None, exc)]
        return [self._eval_alone(model, it) for it in items]

    def _plan_round(self) -> None:
        """The block length of every adaptive sequence's next round (one for all: equal
        blocks verify in one pass). Set at a verify tick, before the sequences resume, from
        acceptance so far: no wall clock, so a rerun repeats every batch shape."""
        ctls = [s.run.controller for s in self._slots.values() if s.run.adaptive]
        self.round_k = batch_k(ctls, self.growth, self.jump)

    def _advance(self, slot: _Slot, rows: list[np.ndarray] | None, exc: BaseException | None, done: list[Ticket]) -> None:
        """Resume a sequence with its rows (or its failure) up to its next requests."""
        self._slots[slot.seq] = slot
        try:
            if exc is not None:
                slot.reqs = slot.gen.throw(exc if isinstance(exc, UserError) else UserError(str(exc)))
            elif rows is None:
                slot.reqs = next(slot.gen)
            else:
                slot.reqs = slot.gen.send(rows)
        except StopIteration:
            slot.reqs = []
        except Exception as e:  # a bug or llama.cpp failure in this sequence only
            slot.run.finish("error", f"{type(e).__name__}: {e}")
            slot.reqs = []
        ticket = slot.ticket
        for ev in slot.run.drain():
            ticket.events.put(ev)
            if isinstance(ev, FinishedEvent):
                ticket.finished = ev
        if not slot.reqs:
            self._release(slot)
            if ticket.finished is None:  # pragma: no cover - a coroutine always ends with one
                ticket.finished = _error_event("generation ended without a result")
                ticket.events.put(ticket.finished)
            done.append(ticket)

    def _drop_cancelled(self, done: list[Ticket]) -> None:
        """Waiting jobs cancelled before their turn (a client that left) end "cancelled" now:
        they never take a sequence, and the jobs behind them move up."""
        with self._lock:
            gone = [t for t in self._waiting if t.cancelled()]
            if gone:
                self._waiting = deque(t for t in self._waiting if t not in gone)
        for ticket in gone:
            self._finish_unstarted(ticket, _cancelled_event(), done)

    @staticmethod
    def _finish_unstarted(ticket: Ticket, finished: FinishedEvent, done: list[Ticket]) -> None:
        """A job that ends before taking a sequence (its settings or prompt cannot run, or it was cancelled)."""
        ticket.finished = finished
        ticket.events.put(finished)
        done.append(ticket)

    def _release(self, slot: _Slot) -> None:
        del self._slots[slot.seq]
        slot.gen.close()
        for m in self.engine.models.values():
            m.rollback_seq(slot.seq, 0)


def _error_event(error: str | UserError) -> FinishedEvent:
    return FinishedEvent("error", "", [], GenStats(), str(error), error if isinstance(error, UserError) else None)


def _cancelled_event() -> FinishedEvent:
    return FinishedEvent("cancelled", "", [], GenStats())
