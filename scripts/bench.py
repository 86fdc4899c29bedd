#!/usr/bin/env python
"""Speed benchmark: base alone vs naive EFT vs speculative EFT, on synthetic GGUF models.

Prints tokens/s for the base model alone (plain llama.cpp greedy/sampled loop), the chat
model alone, naive EFT (k = 0), speculative EFT with fixed k = 2, 4, 8, 16 and adaptive k,
with the measured acceptance, for one or more agreement levels between the EFT
distribution and the chat model. All ratios come from one process run (machines are
noisy): every repetition runs all modes back to back and the table shows medians.
Also prints the measured per-token cost of the large model vs the small ones and the
per-token NumPy cost (combine + sample) at a 152k vocabulary.

Shapes:
- ``small`` (CPU default): ``eft_local.llama.synthetic.write_family`` — reference/chat are a
  512-wide 2-layer f32 llama, base is the same network + 30 inert layers (zeroed
  attn_output/ffn_down: identical logits, ~25x the compute). ``base_shift`` perturbs the
  base output projection and so controls how often EFT agrees with chat.
- ``7b-0.5b`` (for a GPU machine): a Qwen2.5-7B-shaped f16 base (3584 wide, 28 layers,
  vocab 152,064) and Qwen2.5-0.5B-shaped chat/reference (896 wide, 24 layers, vocab
  151,936) with random weights. The widths differ, so the EFT relations are not exact:
  the reference's output projection is zero and the base's is scaled by ``base_shift``;
  EFT then equals chat + base_shift·(random base logits), which controls agreement.
- ``pair-mini``: the ``7b-0.5b`` construction at toy size, to test that code path on CPU.
- ``miniature``: not synthetic: the shipped trained family (docs/miniature.md) on its own
  questions, naive vs speculative (``bench_miniature.py``; ``--prompts``, ``--tokens``, ``--repeat``).

Run: ``.venv/bin/python scripts/bench.py`` (default: all agreement levels, greedy plus
one sampled T=0.7 run, ~2–3 minutes on a 2-core CPU). GPU:
``.venv/bin/python scripts/bench.py --shape 7b-0.5b --gpu-layers 999 --agreement high``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine

try:
    from eft_local.engine.draft_control import K_MAX
except ImportError:  # an older checkout under PYTHONPATH (before/after profiles run this script on both)
    K_MAX = 16
from eft_local.engine.events import FinishedEvent
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.synthetic import BOS, CHATML_TEMPLATE, EOS, IM_END, UNK, ModelSpec, build_vocab, write_family, write_model
from eft_local.mix.params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_numpy  # noqa: E402
from bench_runs import PROMPT, Result, eft_run, plain_run  # noqa: E402

# ----------------------------------------------------------------------------------------
# Shapes and agreement levels
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int


@dataclass(frozen=True)
class Shape:
    kind: str  # "family": write_family (exact EFT relations); "pair": different widths
    n_vocab: int
    small: Dims
    base: Dims  # for "family": same width as small, n_layer = small + inert layers
    base_pad_to: int | None = None
    dtype: type = np.float32
    gpu_layers: int = 0
    # agreement level -> base_shift (calibrated on `small` for ~95% / ~70% / ~45% greedy acceptance;
    # the pair shapes are uncalibrated: read the measured acceptance)
    agreement: tuple[tuple[str, float], ...] = ()


SHAPES = {
    "small": Shape(
        "family",
        4096,
        small=Dims(512, 2, 8, 8, 2048),
        base=Dims(512, 32, 8, 8, 2048),
        # greedy acceptance measured here: 0.01 -> ~95%, 0.05 -> ~72%, 0.2 -> ~44%
        agreement=(("high", 0.01), ("medium", 0.05), ("low", 0.2)),
    ),
    "7b-0.5b": Shape(
        "pair",
        151_936,
        small=Dims(896, 24, 14, 2, 4864),  # Qwen2.5-0.5B
        base=Dims(3584, 28, 28, 4, 18944),  # Qwen2.5-7B
        base_pad_to=152_064,
        dtype=np.float16,
        gpu_layers=999,
        agreement=(("high", 0.02), ("medium", 0.1), ("low", 0.3)),
    ),
    # The real vocabulary (Qwen2.5: 151,936 ids, the 7B base padded to 152,064) on a body so
    # small that llama.cpp's own time is small and known: what is left is the host's work.
    "host-152k": Shape(
        "family",
        151_936,
        small=Dims(32, 1, 4, 2, 64),
        base=Dims(32, 2, 4, 2, 64),
        base_pad_to=152_064,
        agreement=(("high", 0.01), ("medium", 0.05), ("low", 0.2)),
    ),
    "pair-mini": Shape(
        "pair",
        4096,
        small=Dims(256, 2, 4, 2, 512),
        base=Dims(512, 16, 8, 4, 1024),
        base_pad_to=4096 + 128,
        dtype=np.float16,
        agreement=(("high", 0.02), ("medium", 0.1), ("low", 0.3)),
    ),
}
CHAT_SHIFT = 0.5  # chat differs from reference (EFT's fine-tuning delta is not zero)


# ----------------------------------------------------------------------------------------
# Model writing
# ----------------------------------------------------------------------------------------


def write_pair_model(
    path: Path,
    dims: Dims,
    n_vocab: int,
    *,
    pad_to: int | None,
    out_scale: float,
    dtype,
    seed: int,
    name: str,
    chat_template: str | None = None,
    eos_id: int = EOS,
) -> Path:
    """A random llama GGUF of any width sharing ``build_vocab(n_vocab)`` texts.

    Speed-only: one random matrix per tensor shape is reused by every layer (identical
    cost, a fraction of the generation time), stored as ``dtype`` (f16 halves the file).
    ``out_scale`` multiplies the output projection (0 gives all-zero logits).
    """
    rng = np.random.default_rng(seed)
    d, ff = dims.n_embd, dims.n_ff
    d_kv = d // dims.n_head * dims.n_head_kv

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / np.sqrt(cols))).astype(dtype)

    texts, scores, types = build_vocab(n_vocab)
    n_total = max(n_vocab, pad_to or 0)
    n_pad = n_total - n_vocab
    texts += [f"[PAD{i}]" for i in range(n_pad)]
    scores += [0.0] * n_pad
    types += [3] * n_pad  # control
    embd = mat(n_total, d, np.sqrt(d))
    out = mat(n_total, d, 4.0 * out_scale) if out_scale else np.zeros((n_total, d), dtype)
    embd[n_vocab:] = 0
    out[n_vocab:] = 0
    ones = np.ones(d, np.float32)
    layer = {
        "attn_norm.weight": ones,
        "ffn_norm.weight": ones,
        "attn_q.weight": mat(d, d),
        "attn_k.weight": mat(d_kv, d),
        "attn_v.weight": mat(d_kv, d),
        "attn_output.weight": mat(d, d),
        "ffn_gate.weight": mat(ff, d),
        "ffn_up.weight": mat(ff, d),
        "ffn_down.weight": mat(d, ff),
    }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(32768)
    w.add_embedding_length(d)
    w.add_block_count(dims.n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(dims.n_head)
    w.add_head_count_kv(dims.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(texts)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(eos_id)
    w.add_unk_token_id(UNK)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", out)
    for i in range(dims.n_layer):
        for key, arr in layer.items():
            w.add_tensor(f"blk.{i}.{key}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_models(
    shape: Shape, directory: Path, base_shift: float, seed: int, shared: dict, reuse: bool = False
) -> dict[str, Path]:
    """base/chat/reference paths for one agreement level (chat/reference written once).

    ``reuse``: GGUFs that an earlier run wrote into ``directory`` for the same shape, shift and
    seed (a stamp file says which) are used as they are: the 7b-0.5b files are ~17 GB.
    """
    stamp = directory / "bench-stamp.txt"
    key = f"{shape!r} base_shift={base_shift!r} seed={seed}"
    if reuse and stamp.is_file() and stamp.read_text() == key:
        paths = _model_paths(shape, directory)
        if all(p.is_file() for p in paths.values()):
            return paths
    stamp.unlink(missing_ok=True)
    paths = _write_models(shape, directory, base_shift, seed, shared)
    if paths != _model_paths(shape, directory):  # where a reuse will look for them
        raise RuntimeError(f"bench: models written to unexpected paths {paths}")
    stamp.write_text(key)
    return paths


def _model_paths(shape: Shape, directory: Path) -> dict[str, Path]:
    root = directory if shape.kind == "family" else directory.parent
    return {"base": directory / "base.gguf", "chat": root / "chat.gguf", "reference": root / "reference.gguf"}


def _write_models(shape: Shape, directory: Path, base_shift: float, seed: int, shared: dict) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    if shape.kind == "family":
        spec = ModelSpec(
            n_vocab=shape.n_vocab,
            n_embd=shape.small.n_embd,
            n_layer=shape.small.n_layer,
            n_head=shape.small.n_head,
            n_head_kv=shape.small.n_head_kv,
            n_ff=shape.small.n_ff,
            n_ctx_train=4096,
        )
        fam = write_family(
            directory,
            shape=spec,
            extra_layers=shape.base.n_layer - shape.small.n_layer,
            chat_shift=CHAT_SHIFT,
            base_shift=base_shift,
            seed=seed,
        )
        if shape.base_pad_to:  # write_family's base again, with padding rows (as Qwen2.5 7B's)
            base = ModelSpec(
                **{
                    **spec.__dict__,
                    "name": "base",
                    "output_shift": base_shift,
                    "shift_seed": seed + 22,
                    "extra_layers": shape.base.n_layer - shape.small.n_layer,
                    "pad_vocab_to": shape.base_pad_to,
                }
            )
            write_model(fam.base, base, seed)
        return {k: Path(v) for k, v in fam.paths().items()}
    if "chat" not in shared:
        root = directory.parent
        shared["chat"] = write_pair_model(
            root / "chat.gguf",
            shape.small,
            shape.n_vocab,
            pad_to=None,
            out_scale=1.0,
            dtype=shape.dtype,
            seed=seed,
            name="chat",
            chat_template=CHATML_TEMPLATE,
            eos_id=IM_END,
        )
        shared["reference"] = write_pair_model(
            root / "reference.gguf",
            shape.small,
            shape.n_vocab,
            pad_to=None,
            out_scale=0.0,
            dtype=shape.dtype,
            seed=seed,
            name="reference",
        )
    base = write_pair_model(
        directory / "base.gguf",
        shape.base,
        shape.n_vocab,
        pad_to=shape.base_pad_to,
        out_scale=base_shift,
        dtype=shape.dtype,
        seed=seed + 22,
        name="base",
    )
    return {"base": base, "chat": shared["chat"], "reference": shared["reference"]}


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------


MODES = [("naive EFT", 0), ("spec k=2", 2), ("spec k=4", 4), ("spec k=8", 8), ("spec k=16", 16), ("spec adaptive", None)]


def bench_level(
    engine: EftEngine,
    plain: dict[str, LlamaModel],
    n_vocab: int,
    n_tokens: int,
    params: SamplingParams,
    repeat: int,
    seed: int,
    echo,
) -> dict[str, list[Result]]:
    prompt = engine.prompt(raw=PROMPT)
    plain_prompt = {r: prompt[r] for r in ("base", "chat")}
    results: dict[str, list[Result]] = {}
    # Warm-up: page in the memory-mapped weights, build graphs.
    eft_run(engine, prompt, 8, params, 0, seed)
    eft_run(engine, prompt, 8, params, 4, seed)
    for r, m in plain.items():
        plain_run(m, plain_prompt[r], 4, params, n_vocab, np.random.default_rng(seed))
    for rep in range(repeat):
        for r, m in plain.items():
            res = plain_run(m, plain_prompt[r], n_tokens, params, n_vocab, np.random.default_rng(seed + rep))
            results.setdefault(f"{r} alone", []).append(res)
        for label, k in MODES:
            results.setdefault(label, []).append(eft_run(engine, prompt, n_tokens, params, k, seed + rep))
    return results


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def print_table(results: dict[str, list[Result]], echo, greedy: bool) -> dict[str, float]:
    tps = {m: med([r.tps for r in rs]) for m, rs in results.items()}
    naive, base = tps["naive EFT"], tps["base alone"]
    naive_ids = results["naive EFT"][0].token_ids
    hdr = f"{'mode':<14} {'tok/s':>8} {'ms/tok':>7} {'x naive':>8} {'x base':>7} {'accept':>7} {'mean k':>7} {'tokens':>6}" + (
        "  same as naive" if greedy else ""
    )
    echo(hdr)
    echo("-" * len(hdr))
    for mode, rs in results.items():
        acc = med([r.acceptance for r in rs])
        mk = med([r.mean_k for r in rs])
        same = ""
        if greedy and mode not in ("base alone", "chat alone"):
            same = "  " + ("yes" if all(r.token_ids == naive_ids for r in rs) else "NO")
        echo(
            f"{mode:<14} {tps[mode]:>8.1f} {med([r.ms_per_token for r in rs]):>7.2f} {tps[mode] / naive:>7.2f}x "
            f"{tps[mode] / base:>6.2f}x {'' if acc is None else f'{acc:.1%}':>7} {'' if mk is None else f'{mk:.1f}':>7} "
            f"{med([r.n_tokens for r in rs]):>6.0f}{same}"
        )
    return tps


# ----------------------------------------------------------------------------------------
# Profile: where the time of a speculative round goes
# ----------------------------------------------------------------------------------------


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}
        self.clock = time.perf_counter

    def wrap(self, key, fn):
        def w(*a, **kw):
            t0 = self.clock()
            try:
                return fn(*a, **kw)
            finally:
                self.t[key] = self.t.get(key, 0.0) + self.clock() - t0
                self.n[key] = self.n.get(key, 0) + 1

        return w


PROFILE_PARTS = {  # decoder module name -> column (names an older decoder lacks are skipped)
    "eft_distribution": "combine+filter",
    "combine": "combine+filter",
    "distribution": "combine+filter",
    "proposal": "combine+filter",
    "base_nucleus": "combine+filter",
    "sample": "sample/accept",
    "accept": "sample/accept",
    "residual": "sample/accept",
    "token_logprob": "sample/accept",
    "keep_row": "row copies",
}
PROFILE_COLUMNS = ("decode", "combine+filter", "sample/accept", "row copies", "py/other")


def _profiled_functions() -> dict:
    """(module, name) -> function for every PROFILE_PARTS name the decoder, its rounds
    (engine/generation.py) and its position math (engine/targets.py) call — modules absent in
    older checkouts are skipped — to be wrapped by a timer."""
    import importlib

    mods = []
    for name in ("eft_local.engine.decoder", "eft_local.engine.generation", "eft_local.engine.targets"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return {(m, n): getattr(m, n) for m in mods for n in PROFILE_PARTS if hasattr(m, n)}


def profile(engine: EftEngine, n_tokens: int, params: SamplingParams, seed: int, echo) -> None:
    """Where a generation's time goes, per generated token and per verified position.

    Run-time patching only (nothing in eft_local changes): every model's ``eval`` (which
    ``prefill`` calls) is llama.cpp decode time (the logits are a view into llama.cpp's buffer, so it holds no
    copy); the decoder's NumPy entry points are timed by kind, and 'row copies' are the
    drafter rows it keeps past the next decode (``keep_row``; older checkouts count them in
    'py/other'); 'py/other' is wall time minus all those (Python bookkeeping). Host
    overhead = wall − decode.
    A verified position is one row of the target distribution: drafts checked plus the
    token each round adds.

    Times are this thread's CPU time (``time.thread_time``), so other jobs on a shared
    machine do not inflate them; run it with ``--threads 1`` so llama.cpp decodes in this
    thread too (then the total is this thread's CPU time over the whole generation).
    """
    prompt = engine.prompt(raw=PROMPT)
    saved = _profiled_functions()
    echo(
        f"{'mode':<14} {'ms/tok':>7} {'host/tok':>8} {'host/pos':>8} "
        + " ".join(f"{c:>14}" for c in PROFILE_COLUMNS)
        + "   (ms per generated token)"
    )
    for label, k in MODES:
        tm = _Timer()
        tm.clock = time.thread_time
        try:
            for m in engine.models.values():
                m.eval = tm.wrap("decode", type(m).eval.__get__(m))  # prefill calls it too
            for (mod, n), fn in saved.items():
                setattr(mod, n, tm.wrap(PROFILE_PARTS[n], fn))
            cpu0 = time.thread_time()
            res = eft_run(engine, prompt, n_tokens, params, k, seed)
            cpu = time.thread_time() - cpu0
        finally:
            for m in engine.models.values():
                del m.eval
            for (mod, n), fn in saved.items():
                setattr(mod, n, fn)
        nt = max(res.n_tokens, 1)
        positions = res.positions or nt
        wall = cpu * 1e3 / nt
        parts = [tm.t.get(c, 0.0) * 1e3 / nt for c in PROFILE_COLUMNS[:-1]]
        host = wall - parts[0]
        echo(
            f"{label:<14} {wall:>7.2f} {host:>8.3f} {host * nt / positions:>8.3f} "
            + " ".join(f"{p:>14.3f}" for p in parts)
            + f" {wall - sum(parts):>14.3f}"
            + f"   positions/tok {positions / nt:.2f}"
        )


def profile_temperatures(engine: EftEngine, args, temps: list[float], level: str, echo) -> None:
    for t in temps:
        params = SamplingParams(temperature=t, top_p=args.top_p if t > 0 else 1.0)
        label = "greedy" if t == 0 else f"T={t:g} top-p {params.top_p:g}"
        echo(f"\n-- {level}, {label}: time per phase (one run each after a warm-up, with timing wrappers)")
        eft_run(engine, engine.prompt(raw=PROMPT), 8, params, 4, args.seed)  # warm-up
        profile(engine, args.tokens, params, args.seed, echo)


def profile_parallel(paths: dict, args, temps: list[float], level: str, echo, n_prompts: int = 8) -> None:
    """The same breakdown for ``--parallel 1`` and 4 (adaptive; scheduler ticks batch every
    sequence's requests per model): thread CPU time per generated token of all prompts."""
    engine = EftEngine.load(paths, n_ctx=512, n_threads=1, n_seq=4)
    texts = parallel_prompts(n_prompts, args.seed)
    prompts = [engine.prompt(raw=t) for t in texts]
    saved = _profiled_functions()
    try:
        for t in temps:
            params = SamplingParams(temperature=t, top_p=args.top_p if t > 0 else 1.0)
            echo(f"\n-- {level}, {'greedy' if t == 0 else f'T={t:g}'}: --parallel, {n_prompts} prompts, adaptive")
            echo(f"{'parallel':<9} {'ms/tok':>7} {'host/tok':>8} " + " ".join(f"{c:>14}" for c in PROFILE_COLUMNS))
            for n_seq in (1, 4):
                parallel_run(engine, prompts, 8, params, n_seq, args.seed)  # warm-up
                tm = _Timer()
                tm.clock = time.thread_time
                for m in engine.models.values():
                    m.eval_many = tm.wrap("decode", type(m).eval_many.__get__(m))
                for (mod, n), fn in saved.items():
                    setattr(mod, n, tm.wrap(PROFILE_PARTS[n], fn))
                cpu0 = time.thread_time()
                try:
                    _, tokens, _, _ = parallel_run(engine, prompts, args.tokens, params, n_seq, args.seed)
                finally:
                    cpu = time.thread_time() - cpu0
                    for m in engine.models.values():
                        del m.eval_many
                    for (mod, n), fn in saved.items():
                        setattr(mod, n, fn)
                nt = max(tokens, 1)
                total = cpu * 1e3 / nt
                parts = [tm.t.get(c, 0.0) * 1e3 / nt for c in PROFILE_COLUMNS[:-1]]
                echo(
                    f"{n_seq:<9} {total:>7.2f} {total - parts[0]:>8.3f} "
                    + " ".join(f"{x:>14.3f}" for x in parts)
                    + f" {total - sum(parts):>14.3f}"
                )
    finally:
        engine.close()


def eval_costs(model: LlamaModel, batches=(1, 3, 5, 9, 17), reps=7) -> dict[int, float]:
    """Median ms of one decode of b tokens (cache rolled back after each)."""
    model.rollback(0)
    model.eval([BOS, 10, 11, 12], 1)
    for _ in range(2):  # warm-up: page in the weights
        model.eval([20] * max(batches), 1)
        model.rollback(4)
    out = {}
    for b in batches:
        ts = []
        for _ in range(reps):
            n0 = model.n_past
            t0 = time.perf_counter()
            model.eval([20] * b, b)
            ts.append(time.perf_counter() - t0)
            model.rollback(n0)
        out[b] = statistics.median(ts) * 1e3
    return out


# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# --parallel: aggregate throughput of many prompts at once (scheduler.Scheduler)
# ----------------------------------------------------------------------------------------

PARALLEL_WORDS = "the answer to the question is hello world once upon a time you and I were there".split()


def parallel_prompts(n: int, seed: int) -> list[str]:
    """n prompts of very different lengths (1 to 16 words: ~5 to ~75 tokens)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(PARALLEL_WORDS, size=int(rng.integers(1, 17)))) for _ in range(n)]


def parallel_run(
    engine: EftEngine,
    prompts: list[dict],
    n_tokens: int,
    params: SamplingParams,
    n_seq: int,
    seed: int,
    cost: tuple[float, float] | None = None,
) -> tuple[float, int, float | None, list[tuple[int, ...]]]:
    """All prompts through a scheduler of n_seq sequences (0: the plain one-by-one path).
    Returns (aggregate tok/s, tokens, acceptance, token ids per prompt)."""
    from eft_local.batch.run import rng_for
    from eft_local.engine.scheduler import Scheduler

    cfg = GenerationConfig(sampling=params, max_tokens=n_tokens, stats_interval=1e9)
    fins: dict[int, FinishedEvent] = {}
    t0 = time.perf_counter()
    if n_seq == 0:
        for i, p in enumerate(prompts):
            for ev in engine.generate(p, cfg, rng_for(seed, i)):
                if isinstance(ev, FinishedEvent):
                    fins[i] = ev
    else:
        sched = Scheduler(engine, n_seq, cost=cost)
        jobs = ((i, (lambda i=i: (prompts[i], cfg, rng_for(seed, i)))) for i in range(len(prompts)))
        fins = dict(sched.run_all(jobs))
        assert sched.kv_used() == 0
    dt = time.perf_counter() - t0
    bad = [f.error for f in fins.values() if f.reason == "error"]
    if bad:
        raise SystemExit(f"generation failed: {bad[0]}")
    tokens = sum(f.stats.n_tokens for f in fins.values())
    drafted = sum(f.stats.drafted for f in fins.values())
    acc = sum(f.stats.accepted for f in fins.values()) / drafted if drafted else None
    return tokens / dt, tokens, acc, [tuple(fins[i].token_ids) for i in range(len(prompts))]


def bench_parallel(args, shape: Shape, out_dir: Path, gpu_layers: int, threads: int, echo) -> None:
    """Aggregate tok/s for each N (and the plain path), per agreement level and temperature;
    every N runs in the same process back to back, so the ratios are comparable."""
    ns = sorted({int(x) for x in args.parallel.split(",") if x.strip()})
    temps = [float(t) for t in args.temperature.split(",") if t.strip()]
    levels = [lv for lv in shape.agreement if lv[0] in args.parallel_levels.split(",")]
    n_ctx = (64 + 80 + args.tokens + K_MAX + 32 + 255) // 256 * 256
    echo(
        f"parallel benchmark: {args.prompts} prompts x {args.tokens} tokens, N = {', '.join(map(str, ns))} "
        f"(plain = one after another, today's path), threads {threads}, best of {args.repeat}"
    )
    shared: dict = {}
    summary = []
    for level, base_shift in levels:
        paths = write_models(shape, out_dir / level, base_shift, args.seed, shared, args.reuse_models)
        single = EftEngine.load(paths, n_ctx=n_ctx, n_gpu_layers=gpu_layers, n_threads=threads)
        multi = EftEngine.load(paths, n_ctx=n_ctx, n_gpu_layers=gpu_layers, n_threads=threads, n_seq=max(ns))
        try:
            prompts = [single.prompt(raw=t) for t in parallel_prompts(args.prompts, args.seed)]
            parallel_run(single, prompts[:2], 8, SamplingParams(), 0, args.seed)  # warm-up
            for t in temps:
                params = SamplingParams(temperature=t, top_p=args.top_p if t > 0 else 1.0)
                label = "greedy" if t == 0 else f"T={t:g} top-p {params.top_p:g}"
                echo(f"\n-- agreement {level} (base_shift {base_shift:g}), {label}")
                echo(f"{'N':>6} {'tok/s':>8} {'x plain':>8} {'x N=1':>7} {'accept':>7} {'tokens':>7} {'rows = plain':>13}")
                rows: dict[int, tuple] = {}
                for _ in range(args.repeat):  # interleaved, best of: other load on the machine only slows a run down
                    for n in [0, *ns]:
                        r = parallel_run(single if n == 0 else multi, prompts, args.tokens, params, n, args.seed, args.cost)
                        if n not in rows or r[0] > rows[n][0]:
                            rows[n] = r
                plain_ids = rows[0][3]
                ref1 = rows[ns[0]][0]
                for n, (tps, tok, acc, ids) in rows.items():
                    same = sum(a == b for a, b in zip(ids, plain_ids))
                    echo(
                        f"{'plain' if n == 0 else n:>6} {tps:>8.1f} {tps / rows[0][0]:>7.2f}x {tps / ref1:>6.2f}x "
                        f"{'' if acc is None else f'{acc:.1%}':>7} {tok:>7} {same:>9}/{len(ids)}"
                    )
                summary.append((level, label, {n: r[0] / rows[0][0] for n, r in rows.items() if n}))
        finally:
            single.close()
            multi.close()
    echo("\n== summary: aggregate tok/s vs plain (target >= 1.5x at N = 4)")
    for level, label, ratios in summary:
        echo(f"  {level:<8} {label:<22} " + "  ".join(f"N={n}: {r:.2f}x" for n, r in ratios.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agreement", choices=("high", "medium", "low", "all"), default="all")
    ap.add_argument(
        "--base-shift", type=float, default=None, help="override the agreement level with this base_shift (one custom level)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per run (default 128)")
    ap.add_argument(
        "--temperature",
        default="0,0.7",
        help="comma-separated temperatures; 0 = greedy (default '0,0.7': greedy plus one sampled run)",
    )
    ap.add_argument("--top-p", type=float, default=0.95, help="top-p for sampled runs (default 0.95)")
    ap.add_argument(
        "--sampled-levels",
        choices=("high", "all"),
        default="high",
        help="agreement levels that also get the sampled (T>0) runs (default: high only)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per mode; the table shows medians")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--shape", choices=(*SHAPES, "miniature"), default="small", help="miniature: the shipped trained family")
    ap.add_argument("--gpu-layers", type=int, default=None, help="layers to offload (default: 0 for small, 999 for 7b-0.5b)")
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the generated GGUFs here (default: temp dir, removed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse-models", action="store_true", help="with --out-dir: use GGUFs an earlier run wrote there for the same shape"
    )
    ap.add_argument("--profile", action="store_true", help="also print a per-phase time breakdown (each temperature)")
    ap.add_argument("--profile-only", action="store_true", help="only the per-phase breakdown (no speed tables)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy microbenchmark")
    ap.add_argument("--numpy-iters", type=int, default=200)
    ap.add_argument(
        "--parallel", metavar="N1,N2,...", help="instead: aggregate tok/s with N sequences at once (scheduler), e.g. 1,2,4,8"
    )
    ap.add_argument("--prompts", type=int, default=32, help="--parallel: prompts per run (default 32)")
    ap.add_argument(
        "--cost",
        type=lambda t: tuple(float(x) for x in t.split(",")),
        default=None,
        metavar="GROWTH,JUMP",
        help="--parallel: the scheduler's decode cost model (default: its CPU/GPU guess)",
    )
    ap.add_argument("--parallel-levels", default="high,medium", help="--parallel: agreement levels (default high,medium)")
    ap.add_argument(
        "--mix", action="store_true", help="behaviour mixing rows instead: two deltas vs one, chat alone (bench_mix.py)"
    )
    args, rest = ap.parse_known_args()
    if args.mix:
        import bench_mix

        sys.argv = [sys.argv[0], *rest]
        return bench_mix.main()
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")

    echo = lambda s="": print(s, flush=True)  # noqa: E731
    if args.shape == "miniature":  # trained distributions, not a synthetic shape (bench_miniature.py)
        import bench_miniature

        temps = [float(t) for t in args.temperature.split(",") if t.strip()]
        return bench_miniature.main(args, temps, args.threads or os.cpu_count() or 1, echo)
    shape = SHAPES[args.shape]
    gpu_layers = shape.gpu_layers if args.gpu_layers is None else args.gpu_layers
    threads = args.threads or os.cpu_count() or 1
    temps = [float(t) for t in args.temperature.split(",") if t.strip()]
    if args.base_shift is not None:
        levels = [(f"base_shift={args.base_shift:g}", args.base_shift)]
    else:
        levels = [lv for lv in shape.agreement if args.agreement in ("all", lv[0])]
    n_ctx = 64 + args.tokens + K_MAX + 32
    n_ctx = (n_ctx + 255) // 256 * 256

    t_start = time.perf_counter()
    tmp = None
    out_dir = args.out_dir
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="eft-bench-")
        out_dir = Path(tmp)
    echo(
        f"EFT speed benchmark: shape {args.shape}, {args.tokens} tokens/run, {args.repeat} repetitions "
        f"(medians), threads {threads}, gpu layers {gpu_layers}"
    )
    s, b = shape.small, shape.base
    echo(
        f"  small (chat/reference): {s.n_embd} wide, {s.n_layer} layers, ff {s.n_ff}; "
        f"base: {b.n_embd} wide, {b.n_layer} layers, ff {b.n_ff}; vocab {shape.n_vocab}"
        + (f" (base padded to {shape.base_pad_to})" if shape.base_pad_to else "")
        + f"; {np.dtype(shape.dtype).name}"
    )
    if args.parallel:
        try:
            bench_parallel(args, shape, out_dir, gpu_layers, threads, echo)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        echo(f"\ntotal time {time.perf_counter() - t_start:.0f}s")
        return
    summary = []
    try:
        shared: dict = {}
        cost_printed = False
        for li, (level, base_shift) in enumerate(levels):
            t0 = time.perf_counter()
            paths = write_models(shape, out_dir / level, base_shift, args.seed, shared, args.reuse_models)
            echo(
                f"\n== agreement {level} (base_shift {base_shift:g}, chat_shift {CHAT_SHIFT:g}); "
                f"models written in {time.perf_counter() - t0:.1f}s to {out_dir / level}"
            )
            engine = EftEngine.load(paths, n_ctx=n_ctx, n_gpu_layers=gpu_layers, n_threads=threads)
            plain = {r: LlamaModel(paths[r], n_ctx=n_ctx, n_gpu_layers=gpu_layers, n_threads=threads) for r in ("base", "chat")}
            try:
                if args.profile_only:
                    profile_temperatures(engine, args, temps, level, echo)
                    profile_parallel(paths, args, temps, level, echo)
                    continue
                if not cost_printed:
                    cb, cs = eval_costs(plain["base"]), eval_costs(plain["chat"])
                    echo(
                        f"per-token cost (one decode, ms): base {cb[1]:.2f}, small {cs[1]:.2f} -> "
                        f"large/small = {cb[1] / cs[1]:.1f}x (target >= 10x)"
                    )
                    echo("  batched decode, ms: " + ", ".join(f"b={k}: base {cb[k]:.1f} / small {cs[k]:.2f}" for k in cb))
                    cost_printed = True
                for t in temps:
                    if t > 0 and args.sampled_levels == "high" and li > 0 and args.base_shift is None:
                        continue
                    params = SamplingParams(temperature=t, top_p=args.top_p if t > 0 else 1.0)
                    label = "greedy (T=0)" if t == 0 else f"sampled (T={t:g}, top-p {params.top_p:g})"
                    echo(f"\n-- {level}, {label}")
                    res = bench_level(engine, plain, engine.vocab.n, args.tokens, params, args.repeat, args.seed, echo)
                    tps = print_table(res, echo, greedy=(t == 0))
                    best = max((m for m in tps if m.startswith("spec")), key=tps.get)
                    acc = med([r.acceptance for r in res["spec k=4"]])
                    summary.append(
                        (level, label, acc, tps["spec adaptive"] / tps["naive EFT"], best, tps[best] / tps["naive EFT"])
                    )
                if args.profile:
                    profile_temperatures(engine, args, temps, level, echo)
            finally:
                engine.close()
                for m in plain.values():
                    m.close()
        if summary:
            echo("\n== summary: speculative vs naive EFT (target >= 2.5x at high agreement)")
        for level, label, acc, r_ad, best, r_best in summary:
            echo(f"  {level:<8} {label:<30} acceptance(k=4) {acc:.1%}  adaptive {r_ad:.2f}x  best {best} {r_best:.2f}x")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_numpy:
        echo()
        bench_numpy.run(args.numpy_iters, echo=echo)
    echo(f"\ntotal time {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
