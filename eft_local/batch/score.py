"""``eft-local score``: EFT log-probabilities of given continuations, no server.

Rows in (JSONL): ``{"id"?, "prompt" | "messages", "continuations": [str, …]}`` (or
``"continuation": str``), with the row overrides of ``run`` (``alpha``, ``beta``,
``weights``, …). ``prompt`` is raw text (as ``run --raw``: BOS per model, no template);
``messages`` are rendered with the chat template and its generation prompt, and the
continuation follows. Rows out: ``{id, alpha, beta, weights, continuations: [{text,
logprob, n_tokens, is_greedy, token_ids, token_logprobs}]}`` (plus any swept grid keys),
in input order, grid point by grid point; a bad row becomes ``{id, error}``.

A continuation after a raw prompt is split off the tokens of prompt + continuation (as
lm-evaluation-harness does), so the scores equal the server's ``echo`` of the whole text;
after messages it is tokenized on its own as plain text.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eft_local.batch.output import Claim, claim_output, row_json
from eft_local.batch.prompt_file import PromptItem, _item, _load_row, read_text, split_lines
from eft_local.batch.run import BatchOptions, role_prompt
from eft_local.engine.config import effective_settings, generation_config
from eft_local.engine.decoder import EftEngine
from eft_local.engine.scoring import score_continuations
from eft_local.errors import UserError
from eft_local.mix.logprobs import TokenLogprob
from eft_local.settings import advice


@dataclass
class ScoreItem:
    prompt: PromptItem
    continuations: list[str] = field(default_factory=list)


@dataclass
class ScoreSummary:
    rows: int = 0
    tokens: int = 0
    errors: int = 0
    first_error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def line(self) -> str:
        wall = time.perf_counter() - self.started
        rate = self.tokens / wall if wall > 0 else 0.0
        err = f", {self.errors} error row(s) (first: {self.first_error})" if self.errors else ""
        return f"{self.rows} rows, {self.tokens} tokens scored, {rate:.1f} tok/s, {wall:.1f} s{err}"


# -- the file ------------------------------------------------------------------------------------
def read_score_file(path: str | Path) -> list[ScoreItem]:
    """Every row, parsed up front (a malformed file fails before anything loads), with the
    bounds and JSON rules of ``run``'s prompt files."""
    if str(path) == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("--prompt-file -: pipe the rows in (e.g. `... --prompt-file - < rows.jsonl`)")
        name, content = "stdin", read_text(sys.stdin.buffer, "standard input")
    else:
        p = Path(path)
        if p.is_dir():
            raise UserError(f"prompt file is a directory: {p}")
        if not p.exists():
            raise UserError(f"prompt file not found: {p}")
        try:
            with open(p, "rb") as f:
                name, content = p.name, read_text(f, str(p))
        except OSError as e:
            raise UserError(f"cannot read prompt file {p}: {e.strerror}") from None
    items = []
    for lineno, line in enumerate(split_lines(content), 1):
        if line.strip():
            items.append(_row(_load_row(name, lineno, line), len(items), lineno, name))
    if not items:
        raise UserError(f"prompt file has no rows: {path}")
    return items


def _row(obj: Any, index: int, lineno: int, name: str) -> ScoreItem:
    if not isinstance(obj, dict):
        raise UserError(f'{name} line {lineno}: expected a JSON object like {{"prompt": "...", "continuations": ["..."]}}')
    item = ScoreItem(_item(obj, index, lineno))
    if "continuations" in obj and "continuation" in obj:
        item.prompt.error = item.prompt.error or f'line {lineno}: give "continuations" or "continuation", not both'
        return item
    conts = obj.get("continuations", [obj["continuation"]] if "continuation" in obj else None)
    if not isinstance(conts, list) or not conts or not all(isinstance(c, str) and c for c in conts):
        item.prompt.error = item.prompt.error or f'line {lineno}: needs "continuations": a non-empty list of non-empty strings'
        return item
    item.continuations = conts
    return item


# -- scoring ----------------------------------------------------------------------------------------
def continuation_ids(engine: EftEngine, item: ScoreItem, prompt: dict[str, list[int]]) -> list[list[int]]:
    """Each continuation's ids: split off prompt + continuation after a raw prompt (no new
    token boundary at the seam, as the server's echo of the whole text), else plain text."""
    chat = engine.chat
    out = []
    for cont in item.continuations:
        if item.prompt.text is not None:
            context = prompt[engine.chat_name]
            whole = chat.tokenize(item.prompt.text + cont, add_bos=chat.add_bos, special=True)
            if whole[: len(context)] == context and len(whole) > len(context):
                out.append(whole[len(context) :])
                continue
        out.append(chat.tokenize(cont, add_bos=False, special=False))
    return out


def score_row(engine: EftEngine, item: ScoreItem, opts: BatchOptions, point: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """One row at one grid point, and how many tokens it scored (an error row: 0)."""
    settings = effective_settings(opts.settings, point, item.prompt.overrides)
    row: dict[str, Any] = {"id": item.prompt.id}
    try:
        if item.prompt.error:
            raise UserError(item.prompt.error)
        prompt = role_prompt(engine, item.prompt, item.prompt.text is not None, settings)
        conts = continuation_ids(engine, item, prompt)
        params = generation_config(settings).sampling
        params.validate()
        scored = score_continuations(engine, prompt, conts, params, top_k=1)
    except UserError as e:
        return {**row, "prompt": item.prompt.prompt, "error": advice(e)}, 0
    except RuntimeError as e:  # llama.cpp refused a batch: the next row starts clean
        engine.reset()
        return {**row, "prompt": item.prompt.prompt, "error": f"scoring failed: {e}"}, 0
    row["alpha"], row["beta"] = settings["alpha"], settings["beta"]
    row["weights"] = {d: settings["weights"].get(d, 1.0) for d in engine.delta_names if d != "chat"}
    row.update({k: settings[k] for k in opts.swept})
    row["continuations"] = [_scored(text, ids, lps) for text, ids, lps in zip(item.continuations, conts, scored)]
    return row, sum(len(ids) for ids in conts)


def _scored(text: str, ids: list[int], lps: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "text": text,
        "logprob": sum(lp.logprob for lp in lps),
        "n_tokens": len(ids),
        "is_greedy": all(lp.is_greedy for lp in lps),
        "token_ids": ids,
        "token_logprobs": [lp.logprob for lp in lps],
    }


def run_score(
    engine: EftEngine,
    items: list[ScoreItem],
    opts: BatchOptions,
    out: Claim | str | Path | None,
    progress: Callable[[int, int, ScoreSummary], None] | None = None,
) -> ScoreSummary:
    """Every row at every grid point (row-major), written as they finish, in order, under
    ``run``'s output rules (``out``: a ``Claim`` taken before the models loaded, or a path)."""
    summary = ScoreSummary()
    total = len(items) * len(opts.grid)
    claim = out if isinstance(out, Claim) else claim_output(out)
    with claim, claim.rows() as f:
        for item in items:
            for point in opts.grid:
                row, n = score_row(engine, item, opts, point)
                f.write(row_json(row) + "\n")
                f.flush()
                summary.rows += 1
                summary.tokens += n
                if "error" in row:
                    summary.errors += 1
                    summary.first_error = summary.first_error or row["error"]
                if progress:
                    progress(summary.rows, total, summary)
    return summary
