"""Argument parsing for ``scripts/miniature.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from eft_local.models.demo import built_dir

    ap = argparse.ArgumentParser(prog="miniature.py", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the family (deterministic from --seed)")
    b.add_argument("--quick", action="store_true", help="a smaller world and models (under a minute)")
    b.add_argument("--out", type=Path, default=None, help=f"output folder (default {built_dir()})")
    b.add_argument("--seed", type=int, default=None, help="world and training seed (default 0; --check: the shipped one)")
    b.add_argument(
        "--check", action="store_true", help="rebuild into a temporary folder and compare with the shipped files' hashes"
    )
    b.add_argument(
        "--stages",
        type=int,
        choices=(1, 2, 3, 4),
        default=4,
        help="only the first N models (small-base, large-base, small-chat, small-chat-2) and world.jsonl, no manifest",
    )
    r = sub.add_parser("report", help="run the experiment through eft-local and write docs/miniature.md")
    r.add_argument("--models-dir", type=Path, default=None, help="family folder (default: what the miniature profile finds)")
    r.add_argument("--out", type=Path, default=Path("docs/miniature.md"))
    r.add_argument("--n", type=int, default=100, help="questions per split")
    r.add_argument("--eft-local", default=None, help="eft-local executable (default: the one beside this Python)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        from miniature import build

        if args.check:
            return build.check(seed=args.seed, stages=args.stages)
        build.build(args.out or built_dir(), quick=args.quick, seed=args.seed or 0, stages=args.stages)
        return 0
    from miniature import report

    return report.main(args)


if __name__ == "__main__":
    sys.exit(main())
