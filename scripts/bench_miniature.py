"""``bench.py --shape miniature``: naive vs speculative EFT on the shipped miniature family.

The synthetic shapes' agreement is a dial; here the three distributions come from training
(docs/miniature.md): base = large-base, chat = small-chat, reference = small-base, α = β = 1,
prompts = the questions about people only the large base saw (``world.jsonl``), each in the
chat template, each reply run to ``<|im_end|>`` (or ``--tokens``). Every mode runs the same
prompts back to back, ``--repeat`` times; the table shows medians of the per-repetition
totals (tok/s = generated tokens / decode seconds, prompt processing excluded; acceptance =
accepted / drafted over all prompts).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent
from eft_local.mix.params import SamplingParams
from eft_local.models.demo import shipped_dir

# label -> (draft_tokens, beta): β = 0 is small-chat alone (one model: no base, nothing to verify)
MODES = {
    "naive EFT": (0, 1.0),
    "spec k=2": (2, 1.0),
    "spec k=4": (4, 1.0),
    "spec k=8": (8, 1.0),
    "spec adaptive": (None, 1.0),
    "small-chat alone": (0, 0.0),
}


@dataclass
class Totals:
    """One mode over every prompt."""

    tokens: int = 0
    seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    replies: tuple[tuple[int, ...], ...] = ()

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def questions(family: Path, n: int) -> list[str]:
    """The first ``n`` questions about facts only large-base was trained on."""
    rows = [json.loads(line) for line in (family / "world.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["question"] for r in rows if r["seen_by"] == ["large-base"]][:n]


def run_mode(engine: EftEngine, prompts: list[dict], cfg: GenerationConfig, seed: int) -> Totals:
    t = Totals()
    replies = []
    for i, prompt in enumerate(prompts):
        fin = None
        for ev in engine.generate(prompt, cfg, np.random.default_rng(seed + i)):
            if isinstance(ev, FinishedEvent):
                fin = ev
        if fin is None or fin.reason == "error":
            raise SystemExit(f"generation failed: {fin.error if fin else 'no FinishedEvent'}")
        s = fin.stats
        t.tokens += s.n_tokens
        t.seconds += s.decode_seconds
        t.drafted += s.drafted
        t.accepted += s.accepted
        replies.append(tuple(fin.token_ids))
    t.replies = tuple(replies)
    return t


def _med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def print_table(res: dict[str, list[Totals]], greedy: bool, echo) -> dict[str, float]:
    tps = {m: _med([t.tps for t in ts]) for m, ts in res.items()}
    naive = res["naive EFT"][0].replies
    hdr = f"{'mode':<17} {'tok/s':>8} {'x naive':>8} {'accept':>7} {'tokens':>6}" + ("  same as naive" if greedy else "")
    echo(hdr)
    echo("-" * len(hdr))
    for mode, ts in res.items():
        acc = _med([t.acceptance for t in ts])
        same = ""
        if greedy and MODES[mode][1] == 1.0:
            same = "  " + ("yes" if all(t.replies == naive for t in ts) else "NO")
        echo(
            f"{mode:<17} {tps[mode]:>8.0f} {tps[mode] / tps['naive EFT']:>7.2f}x "
            f"{'' if acc is None else f'{acc:.1%}':>7} {_med([t.tokens for t in ts]):>6.0f}{same}"
        )
    return tps


def main(args, temps: list[float], threads: int, echo) -> None:
    """The ``--shape miniature`` rows: ``args.prompts`` questions, ``args.tokens`` at most per reply."""
    fam = shipped_dir()
    qs = questions(fam, args.prompts)
    paths = {"base": fam / "large-base.gguf", "chat": fam / "small-chat.gguf", "reference": fam / "small-base.gguf"}
    echo(
        f"EFT speed benchmark: shape miniature (the shipped family, {fam}), {len(qs)} large-only questions, "
        f"replies to <|im_end|> or {args.tokens} tokens, {args.repeat} repetitions (medians), threads {threads}"
    )
    engine = EftEngine.load(paths, n_ctx=256, n_gpu_layers=args.gpu_layers or 0, n_threads=threads)
    try:
        prompts = [engine.prompt(messages=[{"role": "user", "content": q}]) for q in qs]
        for t in temps:
            top_p = args.top_p if t > 0 else 1.0
            echo(f"\n-- {'greedy (T=0)' if t == 0 else f'sampled (T={t:g}, top-p {top_p:g})'}, alpha = beta = 1")
            cfgs = {
                label: GenerationConfig(SamplingParams(beta=beta, temperature=t, top_p=top_p), args.tokens, k, stats_interval=1e9)
                for label, (k, beta) in MODES.items()
            }
            for cfg in cfgs.values():  # warm-up: graphs, memory-mapped weights
                run_mode(engine, prompts[:2], cfg, args.seed)
            res: dict[str, list[Totals]] = {}
            for rep in range(args.repeat):
                for label, cfg in cfgs.items():
                    res.setdefault(label, []).append(run_mode(engine, prompts, cfg, args.seed + rep))
            print_table(res, t == 0, echo)
    finally:
        engine.close()
