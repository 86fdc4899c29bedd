#!/usr/bin/env python
"""Behaviour mixing speed: speculative EFT with two deltas vs one, and "chat alone".

On the CPU family of ``scripts/bench.py`` (512-wide 2-layer chat/reference, the base the
same network + 30 inert layers) plus a second fine-tuned model. Prints, from one run
(medians over ``--repeat``; every repetition runs every mode back to back):
- speculative adaptive EFT, one delta (α = β = 1) vs two deltas (α = 1, safe = 0.5);
- compare's "chat alone" (α = 1, β = 0, other deltas 0: only the chat model runs) vs the
  chat model alone in a plain llama.cpp loop (goal ≥ 0.9×), and vs the same corner with
  β = 1e-30, which forces every model to run as before zero-weight models were skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from eft_local.engine.decoder import EftEngine
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, write_family, write_model
from eft_local.mix.params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runs import PROMPT, eft_run, plain_run  # noqa: E402


def write_mix(directory: Path) -> dict[str, Path]:
    spec = ModelSpec(n_embd=512, n_layer=2, n_head=8, n_head_kv=8, n_ff=1024, n_ctx_train=4096)
    fam = write_family(directory, shape=spec, extra_layers=30, chat_shift=0.5, base_shift=0.01)
    safe = write_model(
        directory / "safe.gguf",
        ModelSpec(
            **{
                **spec.__dict__,
                "name": "safe",
                "output_shift": 0.05,
                "shift_seed": 33,
                "chat_template": CHATML_TEMPLATE,
                "eos_id": IM_END,
            }
        ),
        seed=0,
    )
    return {**fam.paths(), "safe": safe}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_mix(Path(tmp))
        engine = EftEngine.load(paths, n_ctx=1024, n_threads=args.threads)
        plain_chat = LlamaModel(paths["chat"], n_ctx=1024, n_threads=args.threads)
        prompt = engine.prompt(raw=PROMPT)
        greedy = SamplingParams(temperature=0.0)
        modes = {
            "EFT 1 delta (safe=0)": (SamplingParams(temperature=0.0, weights={"safe": 0.0}), None),
            "EFT 2 deltas (safe=0.5)": (SamplingParams(temperature=0.0, weights={"safe": 0.5}), None),
            "chat alone, all models run (β=1e-30)": (
                SamplingParams(alpha=1.0, beta=1e-30, temperature=0.0, weights={"safe": 0.0}),
                0,
            ),
            "chat alone (compare column)": (SamplingParams(alpha=1.0, beta=0.0, temperature=0.0, weights={"safe": 0.0}), 0),
        }
        tps: dict[str, list[float]] = {m: [] for m in [*modes, "chat model, plain llama.cpp loop"]}
        for rep in range(args.repeat):
            for name, (params, k) in modes.items():
                engine.reset()
                tps[name].append(eft_run(engine, prompt, args.tokens, params, k, rep).tps)
            tps["chat model, plain llama.cpp loop"].append(
                plain_run(plain_chat, prompt["chat"], args.tokens, greedy, engine.vocab.n, np.random.default_rng(0)).tps
            )
        med = {m: statistics.median(v) for m, v in tps.items()}
        for m, v in med.items():
            print(f"{m:<40} {v:8.1f} tok/s")
        print(
            f"two deltas / one delta (speculative adaptive): {med['EFT 2 deltas (safe=0.5)'] / med['EFT 1 delta (safe=0)']:.2f}x"
        )
        print(
            f"chat alone / plain chat model: {med['chat alone (compare column)'] / med['chat model, plain llama.cpp loop']:.2f}x"
        )
        print(
            f"chat alone now / before (every model ran): {med['chat alone (compare column)'] / med['chat alone, all models run (β=1e-30)']:.2f}x"
        )
        engine.close()
        plain_chat.close()


if __name__ == "__main__":
    main()
