"""``eft-local run``: batch mode, prompts from a file, JSONL rows out."""

from __future__ import annotations

import argparse
import sys

from eft_local.cli.options import (
    add_setting,
    default_parallel,
    grid_points,
    load_engine,
    model_args,
    prepare,
    progress_printer,
    rows_args,
    sampling_args,
)
from eft_local.errors import UserError
from eft_local.settings import SETTINGS

TEMPLATE_SETTINGS = ("prompt_style", "system_prompt")  # what --raw leaves out


def register(sub) -> None:
    p = sub.add_parser("run", help="batch mode: prompts from a file, JSONL out")
    rows_args(p, ".txt (one prompt per line) or .jsonl ({id?, prompt} or {id?, messages})", "run every prompt")
    p.add_argument("--raw", action="store_true", help="no chat template: prompt text as-is, BOS per model")
    add_setting(p, "parallel")
    model_args(p)
    sampling_args(p)
    p.set_defaults(func=cmd_run)


# -- commands ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from eft_local.batch.output import claim_output
    from eft_local.batch.prompt_file import read_prompt_file

    refuse_unused_with_raw(args)
    items = read_prompt_file(args.prompt_file)
    with claim_output(args.output, args.prompt_file) as claim:  # checked and locked before any model loads
        return _generate(args, items, claim)


def _generate(args: argparse.Namespace, items: list, claim) -> int:
    from eft_local.batch.run import BatchOptions, run_batch

    paths, settings, _ = prepare(args)
    grid = grid_points(args, settings, paths, rows=len(items))
    total = len(items) * len(grid)
    parallel = min(settings["parallel"] or default_parallel(settings), max(total, 1))
    engine = load_engine(paths, settings, n_seq=parallel)
    if not args.raw and not engine.chat.chat_template:
        engine.close()
        raise UserError(f"{paths['chat']} has no chat template; pass --raw to send the prompts as plain text")
    opts = BatchOptions(settings=settings, raw=args.raw, grid=grid)
    try:
        summary = run_batch(engine, items, opts, claim, progress=progress_printer(total), parallel=parallel)
    finally:
        engine.close()
    print(f"eft-local: {summary.line()}", file=sys.stderr)
    from eft_local.llama.rpc import EXIT_RPC_LOST, report_lost

    if report_lost():
        return EXIT_RPC_LOST
    return 1 if summary.errors == summary.prompts else 0  # every row failed (rows still written)


def refuse_unused_with_raw(args: argparse.Namespace) -> None:
    """--raw sends the prompt text as it is: a flag that shapes the templated prompt would be
    silently ignored, so it is refused (a profile's default for it is simply not used)."""
    if not args.raw:
        return
    for name in TEMPLATE_SETTINGS:
        if getattr(args, name, None) is not None:
            raise UserError(f"{SETTINGS[name].cli_flag} has no effect with --raw (raw prompts get no template); drop one of them")
