#!/usr/bin/env python
"""RPC benchmark: naive vs speculative EFT with the base local, over loopback RPC, and over
loopback with 2 ms and 10 ms added per message (a delaying TCP relay, ``rpc_proxy.py``).

Speculative EFT consults the base once per drafted *block*, so each network round trip is
shared by the whole block; naive EFT pays it for every token. All four placements are
loaded at once and every repetition runs them back to back (the machine is noisy), so the
printed ratios come from one run. Greedy, synthetic family (``eft_local.llama.synthetic``): the
base is the chat/reference network plus inert layers, so the base is the expensive model.

Run: ``python scripts/bench_rpc.py`` (~1–2 min on 2 CPU cores). The rpc-servers are started
here as subprocesses on 127.0.0.1 (one per placement: a server serves one client at a time).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from rpc_proxy import LatencyProxy

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent
from eft_local.llama.rpc import supports_rpc
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.mix.params import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "hello world the answer to the question is"}]


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "rpc-server", "--port", str(port), "--threads", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("rpc-server did not start")


def run(engine: EftEngine, k: int | None, n: int) -> tuple[float, float | None, tuple[int, ...]]:
    cfg = GenerationConfig(sampling=SamplingParams(temperature=0.0), max_tokens=n, draft_tokens=k, stats_interval=1e9)
    fin = None
    prompt = engine.prompt(messages=PROMPT)
    for ev in engine.generate(prompt, cfg, np.random.default_rng(0)):
        if isinstance(ev, FinishedEvent):
            fin = ev
    if fin is None or fin.reason == "error":
        raise SystemExit(f"generation failed: {fin.error if fin else '?'}")
    return fin.stats.tokens_per_second, fin.stats.acceptance, tuple(fin.token_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads, client and each server (default 1)")
    ap.add_argument("--layers", type=int, default=16, help="base layers (chat/reference have 2)")
    ap.add_argument("--base-shift", type=float, default=0.01, help="0.01: ~95%% acceptance, 0.05: ~70%%")
    ap.add_argument("--draft-tokens", type=int, default=None, help="speculative block (default adaptive)")
    args = ap.parse_args()
    if not supports_rpc():
        raise SystemExit("llama-cpp-python was built without -DGGML_RPC=ON")

    tmp = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    spec = ModelSpec(n_vocab=4096, n_embd=512, n_layer=2, n_head=8, n_head_kv=8, n_ff=2048, n_ctx_train=4096)
    fam = write_family(tmp, shape=spec, extra_layers=args.layers - 2, chat_shift=0.5, base_shift=args.base_shift)
    servers, proxies, engines = [], [], {}
    try:
        placements: dict[str, list[str]] = {"local": []}
        for name, delay in (("loopback RPC", None), ("RPC +2 ms/msg", 0.002), ("RPC +10 ms/msg", 0.010)):
            proc, endpoint = start_server(args.threads)
            servers.append(proc)
            if delay is not None:
                host, port = endpoint.split(":")
                proxies.append(LatencyProxy((host, int(port)), delay))
                endpoint = proxies[-1].endpoint
            placements[name] = [endpoint]
        for name, endpoints in placements.items():
            engines[name] = EftEngine.load(
                fam.paths(), n_ctx=1024, n_gpu_layers=-1, n_threads=args.threads, rpc={"base": endpoints} if endpoints else {}
            )
        report(engines, args)
    finally:
        for e in engines.values():
            e.close()
        for p in proxies:
            p.close()
        for s in servers:
            s.kill()


def report(engines: dict[str, EftEngine], args) -> None:
    modes = {"naive": 0, "speculative": args.draft_tokens}
    tps: dict[tuple[str, str], list[float]] = {}
    acc: dict[str, float | None] = {}
    ref: dict[str, tuple[int, ...]] = {}
    for _ in range(args.repeat):
        for name, engine in engines.items():
            for mode, k in modes.items():
                t, a, ids = run(engine, k, args.tokens)
                tps.setdefault((name, mode), []).append(t)
                acc[name] = a if mode == "speculative" else acc.get(name)
                if ref.setdefault(mode, ids) != ids:
                    print(f"warning: {name} {mode} tokens differ from local", file=sys.stderr)
    med = {key: statistics.median(v) for key, v in tps.items()}
    print(
        f"base: {args.layers} layers x 512 wide f32, {args.tokens} greedy tokens, threads {args.threads}, "
        f"median of {args.repeat}; acceptance {acc['local'] or 0:.0%}"
    )
    print(f"{'placement':<16} {'naive tok/s':>12} {'spec tok/s':>12} {'spec/naive':>11} {'naive kept':>11} {'spec kept':>10}")
    for name in engines:
        n, s = med[(name, "naive")], med[(name, "speculative")]
        print(
            f"{name:<16} {n:>12.1f} {s:>12.1f} {s / n:>10.2f}x {n / med[('local', 'naive')]:>10.0%} "
            f"{s / med[('local', 'speculative')]:>10.0%}"
        )


if __name__ == "__main__":
    main()
