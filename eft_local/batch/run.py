"""Batch mode: prompts in, one JSON object per prompt out, in input order."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eft_local.batch.output import Claim, claim_output, row_json
from eft_local.batch.prompt_file import PromptItem
from eft_local.engine.config import GenerationConfig, effective_settings, generation_config
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent, GenStats
from eft_local.engine.session import rng_for, with_system
from eft_local.errors import UserError


@dataclass
class BatchOptions:
    """Checked settings (``cli.resolve_settings``), --raw, and the grid's points ([{}]: none)."""

    settings: dict[str, Any]
    raw: bool = False
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])

    @property
    def swept(self) -> list[str]:
        """Grid keys a row must carry besides alpha, beta and weights."""
        return sorted({k for p in self.grid for k in p} - {"alpha", "beta", "weights"})


@dataclass
class Summary:
    prompts: int = 0
    tokens: int = 0
    decode_seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    errors: int = 0
    first_error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def add(self, fin: FinishedEvent) -> None:
        self.prompts += 1
        self.tokens += fin.stats.n_tokens
        self.decode_seconds += fin.stats.decode_seconds if fin.stats.n_tokens else 0.0
        self.drafted += fin.stats.drafted
        self.accepted += fin.stats.accepted
        if fin.reason == "error":
            self.errors += 1
            self.first_error = self.first_error or fin.error_text()

    def line(self) -> str:
        tps = self.tokens / self.decode_seconds if self.decode_seconds else 0.0
        acc = f"{100 * self.accepted / self.drafted:.1f}%" if self.drafted else "n/a (naive)"
        err = f", {self.errors} error row(s) (first: {self.first_error})" if self.errors else ""
        wall = time.perf_counter() - self.started
        return f"{self.prompts} prompts, {self.tokens} tokens, {tps:.1f} tok/s, acceptance {acc}, {wall:.1f} s{err}"


def role_prompt(engine: EftEngine, item: PromptItem, raw: bool, settings: dict[str, Any]) -> dict[str, list[int]]:
    if raw:
        if item.text is None:
            raise UserError('--raw needs text prompts, not "messages"')
        return engine.prompt(raw=item.text)
    messages = with_system(item.messages or [{"role": "user", "content": item.text or ""}], settings.get("system_prompt"))
    return engine.prompt(messages=messages, style=settings["prompt_style"])


def prepare_job(
    engine: EftEngine, item: PromptItem, opts: BatchOptions, settings: dict[str, Any]
) -> tuple[dict[str, list[int]], GenerationConfig]:
    """The prompt and config of one row, or a UserError (the row becomes an error row)."""
    if item.error:
        raise UserError(item.error)
    prompt = role_prompt(engine, item, opts.raw, settings)
    return prompt, generation_config(settings)


def run_one(
    engine: EftEngine, item: PromptItem, index: int, opts: BatchOptions, point: dict[str, Any] | None = None
) -> tuple[dict[str, Any], FinishedEvent]:
    """Generate for one prompt at one grid point; a bad prompt becomes an error row."""
    t0 = time.perf_counter()
    prompt_ids: list[int] = []
    fin: FinishedEvent | None = None
    settings = effective_settings(opts.settings, point or {}, item.overrides)
    try:
        prompt, config = prepare_job(engine, item, opts, settings)
        prompt_ids = prompt[engine.chat_name]
        for ev in engine.generate(prompt, config, rng_for(settings["seed"], index)):
            if isinstance(ev, FinishedEvent):
                fin = ev
    except (UserError, RuntimeError) as e:
        if isinstance(e, RuntimeError):  # llama.cpp refused a batch: the next prompt starts clean
            engine.reset()
        fin = FinishedEvent(
            "error", "", [], GenStats(seconds=time.perf_counter() - t0), str(e), e if isinstance(e, UserError) else None
        )
    assert fin is not None
    return make_row(engine, item, opts, settings, prompt_ids, fin, time.perf_counter() - t0), fin


def make_row(
    engine: EftEngine,
    item: PromptItem,
    opts: BatchOptions,
    settings: dict[str, Any],
    prompt_ids: list[int],
    fin: FinishedEvent,
    seconds: float,
) -> dict[str, Any]:
    row = _row(item, prompt_ids, fin, seconds)
    row["alpha"], row["beta"] = settings["alpha"], settings["beta"]
    row["weights"] = {d: settings["weights"].get(d, 1.0) for d in engine.delta_names if d != "chat"}
    row.update({k: settings[k] for k in opts.swept})
    return row


def _row(item: PromptItem, prompt_ids: list[int], fin: FinishedEvent, seconds: float) -> dict[str, Any]:
    reason = fin.reason if fin.reason in ("stop", "length", "error") else "error"
    row = {
        "id": item.id,
        "prompt": item.prompt,
        "text": fin.text,
        "token_ids": fin.token_ids,
        "prompt_token_ids": prompt_ids,
        "finish_reason": reason,
        "n_tokens": fin.stats.n_tokens,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(fin.stats.tokens_per_second, 2),
        "drafted": fin.stats.drafted,
        "accepted": fin.stats.accepted,
    }
    if reason == "error":
        row["error"] = fin.error_text() or "generation failed"
    return row


def run_batch(
    engine: EftEngine,
    items: list[PromptItem],
    opts: BatchOptions,
    out: Claim | str | Path | None,
    progress: Callable[[int, int, Summary], None] | None = None,
    parallel: int = 1,
) -> Summary:
    """Every prompt at every grid point, rows in input order (prompt-major).

    ``parallel`` > 1 runs that many generations at once (``scheduler.Scheduler``; the engine
    must hold that many sequences); rows finishing early wait in memory for their turn.
    ``out``: a ``Claim`` taken before the models loaded, or a path (claimed now).
    """
    summary = Summary()
    total = len(items) * len(opts.grid)
    claim = out if isinstance(out, Claim) else claim_output(out)
    with claim, claim.rows() as f:

        def write(row: dict[str, Any], fin: FinishedEvent) -> None:
            f.write(row_json(row) + "\n")
            f.flush()
            summary.add(fin)
            if progress:
                progress(summary.prompts, total, summary)

        if parallel > 1:
            _run_parallel(engine, items, opts, parallel, write)
            return summary
        for i, item in enumerate(items):
            for point in opts.grid:  # prompt-major; prompt i keeps its RNG stream at every point
                write(*run_one(engine, item, i, opts, point))
    return summary


def _run_parallel(
    engine: EftEngine,
    items: list[PromptItem],
    opts: BatchOptions,
    parallel: int,
    write: Callable[[dict[str, Any], FinishedEvent], None],
) -> None:
    """The rows of ``run_batch`` from a scheduler: submitted in order, written in order."""
    from eft_local.engine.scheduler import Scheduler

    jobs_info: dict[int, tuple[PromptItem, dict[str, Any], list[int], float]] = {}

    def jobs():
        n = 0
        for i, item in enumerate(items):
            for point in opts.grid:
                settings = effective_settings(opts.settings, point, item.overrides)
                jobs_info[n] = (item, settings, [], time.perf_counter())

                def make(item=item, settings=settings, i=i, n=n):
                    prompt, config = prepare_job(engine, item, opts, settings)
                    jobs_info[n][2].extend(prompt[engine.chat_name])
                    return prompt, config, rng_for(settings["seed"], i)

                yield n, make
                n += 1

    ready: dict[int, tuple[dict[str, Any], FinishedEvent]] = {}
    nxt = 0
    for n, fin in Scheduler(engine, parallel).run_all(jobs()):
        item, settings, prompt_ids, t0 = jobs_info.pop(n)
        ready[n] = (make_row(engine, item, opts, settings, prompt_ids, fin, time.perf_counter() - t0), fin)
        while nxt in ready:
            write(*ready.pop(nxt))
            nxt += 1
