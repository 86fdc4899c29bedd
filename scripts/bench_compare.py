#!/usr/bin/env python
"""Before/after speed in one run: ``scripts/bench.py`` of two checkouts, interleaved.

Each round runs the "before" checkout's own ``scripts/bench.py`` and then this one's (each in
a subprocess with ``PYTHONPATH`` at its checkout, so old and new code never mix), with the
same arguments; the order alternates between rounds so drift on a shared machine hits both
sides alike. Prints the median tok/s of every (table, mode) for each side and the ratio.

    .venv/bin/python scripts/bench_compare.py --before /work/before17 --rounds 3 -- \
        --agreement high --repeat 1 --no-numpy
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(?P<mode>[a-zA-Z][a-zA-Z =0-9]+?)\s{2,}(?P<tps>\d+\.\d)\s")


def run_bench(checkout: Path, bench_args: list[str]) -> dict[tuple[str, str], float]:
    """tok/s per (table label, mode) from one run of ``checkout``'s bench.py."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, str(checkout / "scripts" / "bench.py"), *bench_args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    table, found = "", {}
    for line in out.splitlines():
        if line.startswith("-- "):
            table = line[3:].strip()
        elif table and (m := ROW.match(line)):
            found[(table, m["mode"].strip())] = float(m["tps"])
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree of the old commit)")
    ap.add_argument("--after", type=Path, default=HERE, help="default: this checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: arguments for scripts/bench.py")
    args = ap.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            runs[side].append(run_bench(sides[side], bench_args))
            print(f"round {r + 1}/{args.rounds}: {side} done", flush=True)
    keys = [k for k in runs["after"][0] if all(k in res for side in runs.values() for res in side)]
    print(f"\nmedian tok/s over {args.rounds} interleaved rounds: before {sides['before']}, after {sides['after']}")
    print(f"{'table':<44} {'mode':<14} {'before':>8} {'after':>8} {'after/before':>12}")
    for key in keys:
        b = statistics.median(res[key] for res in runs["before"])
        a = statistics.median(res[key] for res in runs["after"])
        print(f"{key[0]:<44} {key[1]:<14} {b:>8.1f} {a:>8.1f} {a / b:>11.3f}x")


if __name__ == "__main__":
    main()
