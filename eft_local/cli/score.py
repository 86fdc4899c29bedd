"""``eft-local score``: EFT log-probabilities of continuations, JSONL rows out (no server)."""

from __future__ import annotations

import argparse
import sys

from eft_local.cli.options import grid_points, load_engine, model_args, prepare, progress_printer, rows_args, sampling_args


def register(sub) -> None:
    p = sub.add_parser("score", help="log-probabilities of given continuations under the EFT mix, JSONL out")
    rows_args(
        p,
        '.jsonl rows: {id?, "prompt": raw text | "messages": [...], "continuations": [str, ...]} '
        '(or "continuation": str), with the row overrides of `run`',
        "score every row",
    )
    model_args(p)
    sampling_args(p)
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from eft_local.batch.output import claim_output
    from eft_local.batch.score import read_score_file

    items = read_score_file(args.prompt_file)
    with claim_output(args.output, args.prompt_file) as claim:  # checked and locked before any model loads
        return _score(args, items, claim)


def _score(args: argparse.Namespace, items: list, claim) -> int:
    from eft_local.batch.run import BatchOptions
    from eft_local.batch.score import run_score

    paths, settings, _ = prepare(args)
    grid = grid_points(args, settings, paths, rows=len(items))
    engine = load_engine(paths, settings)
    opts = BatchOptions(settings=settings, raw=True, grid=grid)
    total = len(items) * len(grid)
    try:
        summary = run_score(engine, items, opts, claim, progress=progress_printer(total))
    finally:
        engine.close()
    print(f"eft-local: {summary.line()}", file=sys.stderr)
    return 1 if summary.errors == summary.rows else 0  # every row failed (rows still written)
