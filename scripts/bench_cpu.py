#!/usr/bin/env python
"""CPU time per generated token, before vs after, interleaved: robust on a shared machine.

Wall-clock tok/s on a busy 2-core machine swings 10x between minutes (see docs/bench.md,
caveats), so this measures each generation's *thread CPU time* with llama.cpp on one
thread (it then decodes in the calling thread): other jobs barely move it. Each round runs
one subprocess per checkout (``PYTHONPATH`` at it, so old and new code never mix), in
alternating order; the models are written once (``scripts/bench.py --shape``).

    .venv/bin/python scripts/bench_cpu.py --before /work/before17 --shape host-152k --rounds 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
MODES = ((0.0, 0), (0.0, 4), (0.0, 16), (0.0, None), (0.7, 0), (0.7, 4), (0.7, 16), (0.7, None))


def worker(model_dir: str, tokens: int) -> None:
    """In the subprocess: ms of CPU per generated token for every mode, one line each."""
    import numpy as np

    try:
        from eft_local.engine.config import GenerationConfig
        from eft_local.engine.decoder import EftEngine
        from eft_local.mix.params import SamplingParams
    except ImportError:  # a checkout from before the package layers
        from eft_local.decoder import EftEngine, GenerationConfig
        from eft_local.sampling import SamplingParams

    paths = {r: f"{model_dir}/{r}.gguf" for r in ("base", "chat", "reference")}
    engine = EftEngine.load(paths, n_ctx=512, n_threads=1)
    prompt = engine.prompt(raw="hello world the answer to the question is")
    for temperature, k in MODES:
        sp = SamplingParams(temperature=temperature, top_p=0.95 if temperature else 1.0)
        cfg = GenerationConfig(sampling=sp, max_tokens=tokens, draft_tokens=k, stats_interval=1e9)
        list(engine.generate(prompt, cfg, np.random.default_rng(0)))  # warm-up
        ms = []
        for rep in range(3):
            t0 = time.thread_time()
            fin = list(engine.generate(prompt, cfg, np.random.default_rng(rep)))[-1]
            ms.append((time.thread_time() - t0) / max(len(fin.token_ids), 1) * 1e3)
        print(f"T={temperature:g} k={k}\t{statistics.median(ms):.4f}", flush=True)
    engine.close()


def run_side(checkout: Path, model_dir: Path, tokens: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(model_dir), "--tokens", str(tokens)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {label: float(v) for label, v in (line.split("\t") for line in out.splitlines() if "\t" in line)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="the other checkout")
    ap.add_argument("--after", type=Path, default=HERE)
    ap.add_argument("--shape", default="small", help="a scripts/bench.py shape (default small)")
    ap.add_argument("--models", type=Path, help="use GGUFs already written here (base/chat/reference.gguf)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.tokens)
    if args.before is None:
        ap.error("--before is required")
    model_dir = args.models or Path(tempfile.mkdtemp(prefix="eft-bench-cpu-"))
    if args.models is None:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench

        bench.write_models(bench.SHAPES[args.shape], model_dir, bench.SHAPES[args.shape].agreement[0][1], 0, {})
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
            runs[side].append(run_side(sides[side], model_dir, args.tokens))
    print(f"CPU ms per generated token, median of {args.rounds} interleaved rounds (models: {args.models or args.shape})")
    print(f"{'mode':<12} {'before':>8} {'after':>8} {'after/before':>12}")
    ratios = []
    for label in runs["after"][0]:
        b = statistics.median(res[label] for res in runs["before"])
        a = statistics.median(res[label] for res in runs["after"])
        ratios.append(a / b)
        print(f"{label:<12} {b:>8.3f} {a:>8.3f} {a / b:>11.3f}x")
    print(f"geometric mean of after/before CPU time: {math.exp(statistics.fmean(math.log(x) for x in ratios)):.3f}")


if __name__ == "__main__":
    main()
