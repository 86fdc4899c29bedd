"""Fingerprint of seeded generations on the synthetic test family: one line per case.

Run it against two checkouts (``PYTHONPATH=<checkout> python scripts/seeded_outputs.py DIR``)
and diff the outputs: a change that claims "behaviour unchanged" must print the same lines.
``--vocab 151936`` writes the family with a real-sized vocabulary (a 32-wide body, as
``scripts/bench.py --shape host-152k``), where the 152k-row sampling paths run.
Cases: greedy and sampled (T = 0.7 top-p 0.95, min-p, top-k, DExperts top-p), naive,
fixed k = 4 and adaptive, lone and ``--parallel 4`` (scheduler), with per-token deltas.

``--check FILE`` compares the lines with a stored fingerprint instead (exit 1 naming the
first line that differs): ``scripts/seeded_outputs.txt`` holds the test family's, as of the
last release that changed seeded output (0.2.0); ``tests/scripts/test_seeded_outputs.py``
keeps them bit-identical from then on.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent, TokenEvent
from eft_local.engine.scheduler import Scheduler
from eft_local.engine.session import rng_for
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.mix.params import SamplingParams

TEXTS = ["hello world", "the answer is", "you and I were there", "one two three four"]
SAMPLINGS = {
    "greedy": SamplingParams(alpha=1.0, beta=1.0, temperature=0.0),
    "t07p95": SamplingParams(alpha=1.0, beta=1.0, temperature=0.7, top_p=0.95),
    "minp-topk": SamplingParams(alpha=1.5, beta=0.5, temperature=1.0, top_p=1.0, min_p=0.05, top_k=20),
    "dexperts": SamplingParams(alpha=1.0, beta=1.0, temperature=0.9, top_p=0.9, top_p_mode="base"),
    "typical": SamplingParams(alpha=0.5, beta=1.0, temperature=1.2, top_p=1.0, typical_p=0.9),
}
DRAFTS = {"naive": 0, "k4": 4, "adaptive": None}


def digest(token_ids: list[int], deltas: list) -> str:
    text = ",".join(map(str, token_ids)) + "|" + ",".join(f"{d:.6f}" for d in deltas if d is not None)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lone(engine: EftEngine, prompts: list[dict], cfg: GenerationConfig) -> list[str]:
    out = []
    for i, prompt in enumerate(prompts):
        events = list(engine.generate(prompt, cfg, rng_for(7, i)))
        deltas = [e.delta for e in events if isinstance(e, TokenEvent) and e.token_id >= 0]
        fin = events[-1]
        assert isinstance(fin, FinishedEvent), fin
        out.append(f"{fin.reason}:{len(fin.token_ids)}:{digest(fin.token_ids, deltas)}")
    return out


def parallel(engine: EftEngine, prompts: list[dict], cfg: GenerationConfig) -> list[str]:
    sched = Scheduler(engine, n_seq=4)
    jobs = [(i, lambda p=p, i=i: (p, cfg, rng_for(7, i))) for i, p in enumerate(prompts)]
    done = dict(sched.run_all(jobs))
    return [f"{done[i].reason}:{len(done[i].token_ids)}:{digest(done[i].token_ids, [])}" for i in range(len(prompts))]


def at_least(low: int):
    """An argparse type: an integer no smaller than ``low`` (else argparse's one-line error)."""

    def integer(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return integer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="where the family's GGUFs are written")
    ap.add_argument("--vocab", type=at_least(512), default=None, help="vocabulary size, >= 512 (default: the test family's)")
    ap.add_argument("--tokens", type=at_least(1), default=40, help="tokens per generation (default 40)")
    ap.add_argument("--check", type=Path, help="compare with this stored fingerprint (exit 1 on the first difference)")
    args = ap.parse_args()
    lines = []
    args.folder.mkdir(parents=True, exist_ok=True)
    shape = ModelSpec(n_vocab=args.vocab) if args.vocab is not None else None
    family = write_family(args.folder, shape=shape, chat_shift=0.6, base_shift=0.6)
    for n_seq, runner in ((1, lone), (4, parallel)):
        engine = EftEngine.load(family.paths(), n_ctx=512, n_threads=1, n_seq=n_seq)
        prompts = [engine.prompt(messages=[{"role": "user", "content": t}]) for t in TEXTS]
        for sname, sampling in SAMPLINGS.items():
            for dname, draft in DRAFTS.items():
                cfg = GenerationConfig(sampling=sampling, max_tokens=args.tokens, draft_tokens=draft, trace=n_seq == 1)
                engine.reset()
                lines.append(f"seq{n_seq} {sname:9} {dname:8} " + " ".join(runner(engine, prompts, cfg)))
                print(lines[-1], flush=True)
        engine.close()
    if args.check is not None:
        sys.exit(compare(lines, args.check.read_text(encoding="utf-8").splitlines()))


def compare(got: list[str], want: list[str]) -> int:
    """0 when the fingerprints match; else 1, after naming the first case that differs."""
    for i in range(max(len(got), len(want))):
        g, w = (got[i] if i < len(got) else "(none)"), (want[i] if i < len(want) else "(none)")
        if g != w:
            print(f"seeded output changed at case {i + 1}:\n  stored: {w}\n  now:    {g}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    main()
