"""Does the chat UI slow generation? Same prompt and settings, batch loop vs the app (headless).

    .venv/bin/python scripts/bench_tui.py [--tokens 600] [--threads 1] [--repeat 3] [--base PATH --chat PATH --reference PATH]

Without paths a synthetic family is written to a temp dir. End-of-generation tokens are
ignored on both sides so every run produces exactly --tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.synthetic import ModelSpec, write_family
from eft_local.mix.params import SamplingParams

PROMPT = "Tell me about the sea."


def batch_tps(paths, args) -> float:
    engine = EftEngine.load(paths, n_ctx=args.n_ctx, n_threads=args.threads)
    try:
        prompt = engine.prompt(messages=[{"role": "user", "content": PROMPT}])
        config = GenerationConfig(SamplingParams(temperature=args.temperature), args.tokens, args.draft_tokens, trace=True)
        list(engine.generate(prompt, config, np.random.default_rng(0)))  # warm-up, like the app's first turn
        ev = list(engine.generate(prompt, config, np.random.default_rng(0)))[-1]
        return ev.stats.tokens_per_second
    finally:
        engine.close()


async def app_tps(paths, args) -> float:
    from eft_local.tui.app import EftChatApp
    from eft_local.tui.widgets.status_bar import StatusBar

    app = EftChatApp(
        paths=paths,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        max_tokens=args.tokens,
        seed=0,
        sampling=SamplingParams(temperature=args.temperature),
        draft_tokens=args.draft_tokens,
        history_path=Path(tempfile.mkdtemp()) / "h.sqlite",
    )
    async with app.run_test(size=(120, 40)) as pilot:
        while app.engine is None:
            assert not app.load_error, app.load_error
            await pilot.pause(0.05)
        for _ in range(2):  # the second turn re-asks the same question, as the batch loop does
            await pilot.press("ctrl+n", *PROMPT, "enter")
            while app.generating:  # plain sleep: Pilot.pause waits for idle and would load the UI thread
                await asyncio.sleep(0.1)
        return app.query_one(StatusBar).stats.tokens_per_second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=600)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--draft-tokens", type=int, default=None)
    for role in ("base", "chat", "reference"):
        p.add_argument(f"--{role}")
    args = p.parse_args()
    if args.base:
        paths = {r: Path(getattr(args, r)) for r in ("base", "chat", "reference")}
    else:
        fam = write_family(tempfile.mkdtemp(), shape=ModelSpec(n_embd=256, n_layer=4), extra_layers=8)
        paths = fam.paths()
    LlamaModel.is_eog = lambda self, token: False  # fixed-length runs on both sides
    batch, app = [], []
    for i in range(args.repeat):  # interleaved, so machine load drifts hit both alike
        batch.append(batch_tps(paths, args))
        app.append(asyncio.run(app_tps(paths, args)))
        print(f"run {i + 1}: batch {batch[-1]:8.1f} tok/s   app {app[-1]:8.1f} tok/s", flush=True)
    b, a = statistics.median(batch), statistics.median(app)
    print(f"median: batch {b:.1f} tok/s, app {a:.1f} tok/s, app/batch = {a / b:.3f}")


if __name__ == "__main__":
    main()
