#!/usr/bin/env python
"""Host work per token at a 152k vocabulary: EFT beyond its models' own llama.cpp time.

Measures, on ``scripts/bench.py --shape host-152k`` models (151,936 ids, bodies so small that
llama.cpp's time is small and known), in thread CPU time with llama.cpp on one thread (so
other jobs on a shared machine barely move it):

- **naive EFT beyond three plain loops**: ms per position of naive EFT (``--draft-tokens 0``)
  minus the sum of three plain llama.cpp loops (base, chat, reference alone: eval one token,
  read the row, argmax) — what EFT adds on top of running its three models;
- **host per token** (rows ending in "host" for naive; every speculative row): CPU time minus
  the time inside llama.cpp's decodes, per generated token. Steadier than the first on a busy
  machine, and without what the three models' decodes lose to each other's caches (naive's
  decodes take ~0.1 ms longer each than a plain loop's here);

greedy and sampled (T = 0.7, top-p 0.95), at high agreement. Every mode runs in each
repetition; medians are printed. ``--before DIR`` runs the same measurement on another
checkout in a subprocess, alternating with this one, and prints before/after ratios from the
one run (the issue-24 goals are printed beside the numbers).

    nice -n 19 .venv/bin/python scripts/bench_host.py --before /tmp/before --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GREEDY = (0.0, 1.0)
SAMPLED = (0.7, 0.95)
# (label, (temperature, top_p), draft_tokens); naive rows are compared with the plain loops
MODES = [
    ("naive greedy", GREEDY, 0),
    ("naive sampled", SAMPLED, 0),
    ("adaptive greedy", GREEDY, None),
    ("adaptive sampled", SAMPLED, None),
    ("k=8 greedy", GREEDY, 8),
    ("k=8 sampled", SAMPLED, 8),
]
GOALS = {  # issue 24, ms: naive = beyond three plain loops per position, the rest host per token
    "naive greedy": 0.15,
    "naive sampled": 0.30,
    "adaptive greedy": 0.25,
    "adaptive sampled": 0.5,
}


def _decode_timer(models) -> dict:
    """Wrap every model's ``eval`` to add its thread CPU time to the returned dict's 'decode'."""
    acc = {"decode": 0.0}
    for m in models:
        fn = type(m).eval.__get__(m)

        def timed(*a, _fn=fn, **kw):
            t0 = time.thread_time()
            try:
                return _fn(*a, **kw)
            finally:
                acc["decode"] += time.thread_time() - t0

        m.eval = timed
    return acc


def worker(model_dir: str, tokens: int, reps: int) -> dict[str, float]:
    """In the subprocess (the checkout under test on PYTHONPATH): medians, ms."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench_runs import PROMPT, eft_run, plain_run

    try:
        from eft_local.engine.eft_engine import EftEngine
    except ImportError:  # before the engine got its own module
        from eft_local.engine.decoder import EftEngine
    from eft_local.llama.adapter import LlamaModel
    from eft_local.mix.params import SamplingParams

    paths = {r: f"{model_dir}/{r}.gguf" for r in ("base", "chat", "reference")}
    engine = EftEngine.load(paths, n_ctx=512, n_threads=1)
    plain = {r: LlamaModel(p, n_ctx=512, n_threads=1) for r, p in paths.items()}
    prompt = engine.prompt(raw=PROMPT)
    n = engine.vocab.n
    argmax = SamplingParams(temperature=0.0)
    acc = _decode_timer(engine.models.values())
    samples: dict[str, list[float]] = {}
    for rep in range(reps + 1):  # the first repetition warms up and is dropped
        plain_ms = 0.0
        for role, m in plain.items():
            t0 = time.thread_time()
            res = plain_run(m, prompt[role], tokens, argmax, n, np.random.default_rng(rep))
            plain_ms += (time.thread_time() - t0) * 1e3 / res.n_tokens
        for label, (temperature, top_p), k in MODES:
            params = SamplingParams(temperature=temperature, top_p=top_p)
            acc["decode"] = 0.0
            t0 = time.thread_time()
            res = eft_run(engine, prompt, tokens, params, k, rep)
            cpu = (time.thread_time() - t0) * 1e3 / max(res.n_tokens, 1)
            host = cpu - acc["decode"] * 1e3 / max(res.n_tokens, 1)
            if rep:
                samples.setdefault(label, []).append(cpu - plain_ms if k == 0 else host)
                if k == 0:
                    samples.setdefault(f"{label} host", []).append(host)
        if rep:
            samples.setdefault("three plain loops", []).append(plain_ms)
    engine.close()
    for m in plain.values():
        m.close()
    return {label: statistics.median(v) for label, v in samples.items()}


def run_side(checkout: Path, model_dir: Path, tokens: int, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, __file__, "--worker", str(model_dir), "--tokens", str(tokens), "--reps", str(reps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another checkout, measured alternately with this one")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="the checkout under test (default: this one)")
    ap.add_argument("--models", type=Path, help="host-152k GGUFs already written here (base/chat/reference.gguf)")
    ap.add_argument("--rounds", type=int, default=3, help="subprocess runs per checkout (alternating)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every mode inside one run")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.reps)))
        return
    model_dir = args.models
    if model_dir is None:
        import bench

        model_dir = Path(tempfile.mkdtemp(prefix="eft-bench-host-"))
        shape = bench.SHAPES["host-152k"]
        bench.write_models(shape, model_dir, dict(shape.agreement)["high"], 0, {})
    sides = {"after": args.after.resolve()}
    if args.before:
        sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            runs[side].append(run_side(sides[side], model_dir, args.tokens, args.reps))
    med = {side: {k: statistics.median(res[k] for res in rs) for k in rs[0]} for side, rs in runs.items()}
    print(
        f"ms, thread CPU time, llama.cpp on 1 thread; median of {args.rounds} runs x {args.reps} repetitions, {args.tokens} tokens"
    )
    print("naive greedy/sampled: beyond three plain loops, per position; the rest: host (CPU - decode) per generated token")
    head = f"{'mode':<18}" + "".join(f"{side:>9}" for side in sides) + ("  after/before" if args.before else "") + "   goal"
    print(head)
    for label in med["after"]:
        vals = [med[side][label] for side in sides]
        ratio = f"  {vals[-1] / vals[0]:>11.2f}x" if args.before and vals[0] > 0 else ("  " + " " * 12 if args.before else "")
        goal = GOALS.get(label)
        print(f"{label:<18}" + "".join(f"{v:>9.3f}" for v in vals) + ratio + (f"   <= {goal}" if goal else ""))


if __name__ == "__main__":
    main()
