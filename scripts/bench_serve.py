"""How much does `eft-local serve` cost over `eft-local run`, and how do queued clients fare?

Starts `eft-local serve` as a subprocess (on 127.0.0.1, a free port) and loads the same three
models in this process for the direct path (what `eft-local run` does per prompt: build the
prompt, run EftEngine.generate). Both get the same prompts in the same order, so their KV
caches reuse the same prefixes. Streaming through the server is measured with raw httpx
(SSE lines), so client-side parsing stays small next to the server's own work.

    python scripts/bench_serve.py                       # synthetic "medium" family
    python scripts/bench_serve.py --base B.gguf --chat C.gguf --reference R.gguf

Prints, per path: time to first token (TTFT), generation tok/s (after the first token) and
total seconds, medians over prompts × repeats, and the server/direct ratios (target ≤ 1.05);
then 1, 4 and 8 concurrent streaming clients: wall time, TTFT median/max, aggregate tok/s, and
the wall time over the sum of the same answers' solo times (1.0 = the queue adds nothing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eft_local.engine.config import generation_config
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.session import Session, rng_for
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.settings import defaults as setting_defaults

SIZES = {
    "small": ModelSpec(),
    "medium": ModelSpec(n_vocab=4096, n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=1024),
}
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain speculative decoding in two sentences.",
    "List three uses for a paperclip.",
    "What is the capital of France, and why?",
    "Tell me a story about a robot who learns to paint.",
    "Summarize the plot of Hamlet.",
    "How do I boil an egg?",
    "Give me a haiku about autumn.",
]


def start_server(paths: dict[str, Path], args) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "eft_local",
        "serve",
        "--port",
        "0",
        "--n-ctx",
        str(args.n_ctx),
        "--threads",
        str(args.threads),
        "--gpu-layers",
        str(args.gpu_layers),
        "--temperature",
        "0",
        "--max-queue",
        "16",
    ]
    for role, p in paths.items():
        cmd += [f"--{role}", str(p)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    for line in proc.stderr:
        if "serving" in line:
            url = line.split(" at ")[1].split()[0]
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, url
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of process ``pid`` (Linux /proc; {} elsewhere)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[task.rsplit("/", 1)[1]] = (int(fields[11]) + int(fields[12])) / tick
    return out


def direct(session: Session, prompt: str, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    # the settings `eft-local run --temperature 0 --max-tokens N` (and the server) use
    config = generation_config(
        {**setting_defaults(), "temperature": 0.0, "max_tokens": max_tokens, "weights": {}, "draft_with": None}
    )
    ids = session.prompt(messages=[{"role": "user", "content": prompt}])
    for ev in session.generate(ids, config, rng_for(None, 0)):
        if isinstance(ev, TokenEvent) and first is None and ev.text:  # as the server: first visible text
            first = time.perf_counter()
        elif isinstance(ev, FinishedEvent):
            tokens = len(ev.token_ids)
    end = time.perf_counter()
    return _result(t0, first, end, tokens)


def served(url: str, prompt: str, max_tokens: int, client: httpx.Client) -> dict[str, float]:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", url + "/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return _result(t0, first, end, tokens)


def _result(t0: float, first: float | None, end: float, tokens: int) -> dict[str, float]:
    first = first or end
    return {
        "ttft": first - t0,
        "total": end - t0,
        "tokens": tokens,
        "tps": (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0,
    }


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=tuple(SIZES), default="medium", help="synthetic family size (default medium)")
    for role in ("base", "chat", "reference"):
        ap.add_argument(f"--{role}", metavar="GGUF", help="use real models instead of a synthetic family (all three)")
    ap.add_argument("--prompts", type=int, default=6, help="prompts per repeat (default 6, at most 8)")
    ap.add_argument("--tokens", type=int, default=128, help="max tokens per answer (default 128)")
    ap.add_argument("--repeat", type=int, default=3, help="passes over the prompts (default 3); medians are shown")
    ap.add_argument("--clients", default="1,4,8", help="concurrent client counts for the queueing part (default 1,4,8)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per model (default 1)")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--gpu-layers", type=int, default=0)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    if args.base and args.chat and args.reference:
        paths = {"base": Path(args.base), "chat": Path(args.chat), "reference": Path(args.reference)}
    else:
        paths = write_family(Path(tmp.name), shape=SIZES[args.size], chat_shift=0.6, base_shift=0.6).paths()
    proc, url = start_server(paths, args)
    engine = EftEngine.load(paths, n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.gpu_layers)
    session = Session(engine)
    prompts = PROMPTS[: max(1, min(args.prompts, len(PROMPTS)))]
    try:
        with httpx.Client(timeout=600) as client:
            served(url, "warm up", 8, client)
            direct(session, "warm up", 8)
            d_rows, s_rows = [], []
            d_cpu, s_cpu = 0.0, {}
            for _ in range(args.repeat):
                for p in prompts:  # interleaved, so load from other processes hits both paths alike
                    c0 = time.thread_time()
                    d_rows.append(direct(session, p, args.tokens))
                    d_cpu += time.thread_time() - c0
                    before = thread_cpu(proc.pid)
                    s_rows.append(served(url, p, args.tokens, client))
                    for tid, t in thread_cpu(proc.pid).items():
                        s_cpu[tid] = s_cpu.get(tid, 0.0) + t - before.get(tid, 0.0)
            print(
                f"models: {', '.join(f'{r}={p.name}' for r, p in paths.items())}; {args.threads} thread(s)/model; "
                f"{len(prompts)} prompts x {args.repeat}, max {args.tokens} tokens, greedy"
            )
            print(f"{'path':<22}{'TTFT ms':>10}{'tok/s':>10}{'total s':>10}{'tokens':>8}")
            for name, rows in (("direct (eft-local run)", d_rows), ("server (streaming)", s_rows)):
                print(
                    f"{name:<22}{1000 * med(rows, 'ttft'):>10.1f}{med(rows, 'tps'):>10.1f}{med(rows, 'total'):>10.3f}"
                    f"{sum(r['tokens'] for r in rows) / len(rows):>8.1f}"
                )
            total_d, total_s = sum(r["total"] for r in d_rows), sum(r["total"] for r in s_rows)

            def paired(key):
                return statistics.median(s[key] / d[key] for d, s in zip(d_rows, s_rows) if d[key] and s[key])

            print(
                f"server/direct (median of per-prompt ratios): TTFT x{paired('ttft'):.3f}, tok/s x{paired('tps'):.3f}, "
                f"total x{paired('total'):.3f}; summed time x{total_s / total_d:.3f} (overhead {100 * (total_s / total_d - 1):+.1f}%)"
            )
            if s_cpu:  # CPU time is what the server adds, whatever else runs on the machine
                engine_cpu = max(s_cpu.values())
                other = sum(s_cpu.values()) - engine_cpu
                print(
                    f"CPU seconds: direct {d_cpu:.2f}; server engine thread {engine_cpu:.2f} (x{engine_cpu / d_cpu:.3f}), "
                    f"server's other threads {other:.2f} (+{100 * other / d_cpu:.1f}% of direct)"
                )

            print("\nqueueing (one generation at a time; clients start together):")
            # each client's prompt alone took (median over the repeats above) this long through the server:
            alone = [statistics.median(r["total"] for r in s_rows[i :: len(prompts)]) for i in range(len(prompts))]
            print(f"{'clients':>8}{'wall s':>10}{'TTFT med ms':>13}{'TTFT max ms':>13}{'agg tok/s':>11}{'wall/sum alone':>16}")
            for n in (int(x) for x in args.clients.split(",")):
                rows: list[dict[str, float]] = [{}] * n
                barrier = threading.Barrier(n + 1)
                clients = [httpx.Client(timeout=600) for _ in range(n)]  # made and connected before the clock starts
                for c in clients:
                    c.get(url.rsplit("/v1", 1)[0] + "/health")

                def one(i: int, rows=rows, barrier=barrier, clients=clients) -> None:
                    barrier.wait()
                    rows[i] = served(url, prompts[i % len(prompts)], args.tokens, clients[i])

                threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                barrier.wait()
                t0 = time.perf_counter()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                for c in clients:
                    c.close()
                expected = sum(alone[i % len(prompts)] for i in range(n))  # one at a time, no idle gaps
                tokens = sum(r["tokens"] for r in rows)
                print(
                    f"{n:>8}{wall:>10.3f}{1000 * med(rows, 'ttft'):>13.1f}{1000 * max(r['ttft'] for r in rows):>13.1f}"
                    f"{tokens / wall:>11.1f}{wall / expected:>16.3f}"
                )
    finally:
        proc.terminate()
        proc.wait(30)
        session.close()
        tmp.cleanup()


if __name__ == "__main__":
    main()
