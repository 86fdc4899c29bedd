#!/usr/bin/env python
"""Per-token NumPy cost of one EFT step (combine + filter + sample) at a real vocabulary size.

Times ``eft_distribution`` + ``sample`` on float32 logit rows of 151,936 entries (Qwen2.5
0.5B–3B) and with a 152,064-entry padded base row (Qwen2.5 7B+), greedy and sampled, and
compares the median to the 0.5 ms/token target.

Two kinds of rows, because the cost of the sampled path depends on how many tokens lie
within ``T·(ln V + 20)`` of the top logit (``eft_local.mix.sampling`` prunes the rest exactly):

- ``gauss``: i.i.d. N(0, 1) logits per model — what "random logits" usually means; every
  token survives the pruning, so this is the worst case for the sampled path;
- ``llm``: a bulk of N(0, 2.5) plus a handful of head tokens 12–20 above it — roughly the
  shape of a real model's logits on a confident step.

Run: ``.venv/bin/python scripts/bench_numpy.py [--iters 200]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eft_local.mix.params import SamplingParams
from eft_local.mix.sampling import eft_distribution, sample, three_roles

N_SMALL = 151_936
N_BASE_PADDED = 152_064
TARGET_MS = 0.5


def make_rows(kind: str, n_base: int, n_small: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, chat, reference) logit rows; the base row may be longer (padding)."""
    if kind == "gauss":
        return tuple(rng.standard_normal(n, dtype=np.float32) for n in (n_base, n_small, n_small))
    rows = []
    head = rng.choice(n_small, 8, replace=False)
    for n in (n_base, n_small, n_small):
        r = (rng.standard_normal(n, dtype=np.float32) * 2.5).astype(np.float32)
        r[head] += rng.uniform(12.0, 20.0, len(head)).astype(np.float32)
        rows.append(r)
    return tuple(rows)


def bench_case(kind: str, n_base: int, params: SamplingParams, iters: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = N_SMALL
    # A pool of different rows so caches and branch predictors don't flatter the result.
    pool = [make_rows(kind, n_base, n, rng) for _ in range(8)]
    mask = np.array([], dtype=np.int64)
    out = np.empty(n, np.float32)
    sample_rng = np.random.default_rng(seed + 1)
    for b, c, r in pool[:3]:  # warm-up
        sample(eft_distribution(*three_roles(b, c, r, params.alpha, params.beta), params, n, mask, out), sample_rng.random())
    times = np.empty(iters)
    support = np.empty(iters)
    for i in range(iters):
        b, c, r = pool[i % len(pool)]
        t0 = time.thread_time()  # CPU time: other jobs on a shared machine barely move it
        d = eft_distribution(*three_roles(b, c, r, params.alpha, params.beta), params, n, mask, out)
        sample(d, sample_rng.random())
        times[i] = time.thread_time() - t0
        support[i] = np.count_nonzero(d.w) if d.ids is None else len(d.ids)
    return {
        "ms_median": float(np.median(times) * 1e3),
        "ms_p90": float(np.percentile(times, 90) * 1e3),
        "support": float(np.median(support)),
    }


CASES = [
    ("T=0 (greedy)", SamplingParams(temperature=0.0)),
    ("T=0.7 top-p 0.95", SamplingParams(temperature=0.7, top_p=0.95)),
    ("T=1 no filter", SamplingParams(temperature=1.0, top_p=1.0)),
    ("T=0.7 top-k 40", SamplingParams(temperature=0.7, top_p=1.0, top_k=40)),
]


def simd_level() -> str:
    """The CPU and the widest SIMD NumPy uses here: the same code costs ~4x more on AVX2-only CPUs."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    level = next((f for f in ("AVX512_SKX", "AVX512F", "AVX2", "SSE42", "ASIMD") if features.get(f)), "baseline")
    return f"{model or 'unknown CPU'}; NumPy {np.__version__} dispatches up to {level}"


def run(iters: int = 200, kinds: tuple[str, ...] = ("gauss", "llm"), echo=print) -> list[dict]:
    echo(f"CPU: {simd_level()}")
    echo(f"NumPy per-token cost: eft_distribution + sample, median of {iters} iterations (target <= {TARGET_MS} ms/token)")
    hdr = f"{'rows':<6} {'base vocab':>10} {'sampling':<18} {'ms/token':>9} {'p90 ms':>7} {'kept':>7}  target"
    echo(hdr)
    echo("-" * len(hdr))
    results = []
    for kind in kinds:
        for n_base in (N_SMALL, N_BASE_PADDED):
            for label, params in CASES:
                res = bench_case(kind, n_base, params, iters)
                ok = "ok" if res["ms_median"] <= TARGET_MS else "MISSED"
                echo(
                    f"{kind:<6} {n_base:>10,} {label:<18} {res['ms_median']:>9.3f} {res['ms_p90']:>7.3f} "
                    f"{res['support']:>7.0f}  {ok}"
                )
                results.append({"rows": kind, "n_base": n_base, "sampling": label, **res})
    echo("kept: support of the sampled distribution (ids with weight; dense rows are sampled in two levels).")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rows", choices=("gauss", "llm", "both"), default="both")
    args = ap.parse_args()
    kinds = ("gauss", "llm") if args.rows == "both" else (args.rows,)
    run(args.iters, kinds)


if __name__ == "__main__":
    main()
