"""``scripts/miniature.py build``: world, tokenizer, four models, GGUFs, world.jsonl, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eft_local.models.demo import FILES, shipped_dir
from miniature.world import World, WorldConfig, make_world


@dataclass(frozen=True)
class BuildConfig:
    world: WorldConfig
    small: dict  # Shape fields
    large: dict
    small_sched: dict  # Schedule fields
    large_sched: dict
    chat_sched: dict


FULL = BuildConfig(
    world=WorldConfig(n_entities=1000, n_given=32, n_family=32),
    small=dict(n_embd=64, n_layer=2, n_head=4, n_ff=192),
    large=dict(n_embd=96, n_layer=4, n_head=4, n_ff=288),
    small_sched=dict(lr=3e-3, max_steps=1000, min_steps=200, batch=128),
    large_sched=dict(lr=3e-3, max_steps=1500, min_steps=200, batch=128),
    chat_sched=dict(lr=1e-3, max_steps=300, min_steps=100, batch=64, target=0.95),
)
# Sized so `build --quick` takes under a minute on 2 idle cores (about 45 s CPU; JAX compiles
# about 3 s per model): 288 large-only facts, EFT ~80-90 % exact on them, either model alone <= 3 %
# (seeds 0-2). Batches of 32 learn the facts in fewer samples than 64 did.
QUICK = BuildConfig(
    world=WorldConfig(n_entities=120, n_given=12, n_family=12),
    small=dict(n_embd=48, n_layer=2, n_head=4, n_ff=128),
    large=dict(n_embd=64, n_layer=3, n_head=4, n_ff=192),
    small_sched=dict(lr=3e-3, max_steps=500, min_steps=100, batch=32),
    large_sched=dict(lr=3e-3, max_steps=700, min_steps=100, batch=32),
    chat_sched=dict(lr=2e-3, max_steps=200, min_steps=50, batch=32, target=0.95),
)
N_CTX = 256  # context length written into the GGUFs (training rows are 33 tokens)


def world_for(quick: bool, seed: int) -> World:
    cfg = QUICK if quick else FULL
    return make_world(WorldConfig(**{**asdict(cfg.world), "seed": seed}))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(out: Path, *, quick: bool = False, seed: int = 0, stages: int = 4) -> dict:
    """Train and write the family; ``stages`` < 4 stops after that many models (small-base,
    large-base, small-chat, small-chat-2: the slow test rebuilds the first to check determinism)
    and writes no manifest (returns the written files' sha256s)."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    import jax

    from miniature.export import write_gguf
    from miniature.model import Shape, n_params
    from miniature.tokenizer import Tokenizer
    from miniature.train import Corpus, Schedule, finetune_batches, pretrain_batches, probe_set, train

    jax.config.update("jax_platforms", "cpu")
    cfg = QUICK if quick else FULL
    t0 = time.monotonic()
    world = world_for(quick, seed)
    tok = Tokenizer.for_world(world)
    out.mkdir(parents=True, exist_ok=True)
    small = Shape(n_vocab=tok.n_vocab, n_ctx=N_CTX, **cfg.small)
    large = Shape(n_vocab=tok.n_vocab, n_ctx=N_CTX, **cfg.large)
    log(
        f"miniature build ({'quick' if quick else 'full'}, seed {seed}) -> {out}: {len(world.entities)} entities, "
        f"{len(world.facts)} facts, {tok.n_vocab} tokens; expect {'under 1 min' if quick else 'about 8-12 min (at most about 20)'} "
        "on 2 idle CPU cores"
    )
    a = Corpus(tok, world.by_split("A-tuned", "A-held"))
    ab = Corpus(tok, world.facts)
    tuned = Corpus(tok, world.by_split("A-tuned"))
    stats: dict[str, dict] = {}

    def pretrain(name: str, shape, sched: dict, corpus: Corpus, seeds: int):
        """Pre-train one base on ``corpus`` (batches, probe and init seeded from ``seeds``), write it."""
        params, stats[name] = train(
            name,
            shape,
            Schedule(**sched),
            pretrain_batches(corpus, seeds + 1, sched["batch"]),
            probe_set(corpus, None, 256, seeds + 2),
            seeds + 3,
        )
        write_gguf(out / f"{name}.gguf", name, shape, params, tok)
        return params

    log("[1/4] small-base: pre-training on set A")
    sb = pretrain("small-base", small, cfg.small_sched, a, seed * 1000)
    if stages < 2:
        return _partial(out, world, ["small-base.gguf"])
    log("[2/4] large-base: pre-training on sets A and B")
    lb = pretrain("large-base", large, cfg.large_sched, ab, seed * 1000 + 10)
    for k, (name, style) in enumerate((("small-chat", "closing"), ("small-chat-2", "bare"))[: stages - 2]):
        log(f"[{3 + k}/4] {name}: fine-tuning small-base on set A dialogues ({style} style)")
        ch, stats[name] = train(
            name,
            small,
            Schedule(**cfg.chat_sched),
            finetune_batches(tuned, style, seed * 1000 + 21 + k, cfg.chat_sched["batch"]),
            probe_set(tuned, style, 256, seed * 1000 + 22 + k),
            seed,
            params=sb,
        )
        write_gguf(out / f"{name}.gguf", name, small, ch, tok)
    if stages < 4:
        return _partial(out, world, list(FILES[:stages]))
    world.write_jsonl(out / "world.jsonl")
    stats["small-base"]["params"] = n_params(sb)
    stats["large-base"]["params"] = n_params(lb)
    manifest = {
        "seed": seed,
        "quick": quick,
        "config": json.loads(json.dumps(asdict(cfg))),
        "n_vocab": tok.n_vocab,
        "training": stats,
        "sha256": {f: sha256(out / f) for f in FILES},
        "build_seconds": round(time.monotonic() - t0, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"python {platform.python_version()}, jax {jax.__version__}".replace("  ", " "),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"done in {manifest['build_seconds']:.0f}s: {', '.join(FILES)} in {out}")
    return manifest


def _partial(out: Path, world: World, files: list[str]) -> dict:
    world.write_jsonl(out / "world.jsonl")
    files.append("world.jsonl")
    log(f"partial build: {', '.join(files)} in {out} (no manifest)")
    return {"sha256": {f: sha256(out / f) for f in files}}


def check(seed: int | None = None, stages: int = 4) -> int:
    """Rebuild the shipped family (its manifest's seed and size) in a temporary folder and
    compare every file's sha256 with the shipped manifest; 0 when all match. ``stages`` < 4:
    only the first models and world.jsonl (``build``'s ``stages``)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    shipped = json.loads((shipped_dir() / "manifest.json").read_text())
    seed = shipped["seed"] if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="miniature-check-") as tmp:
        built = build(Path(tmp), quick=shipped["quick"], seed=seed, stages=stages)
    files = [f for f in FILES if f in built["sha256"]]
    bad = [f for f in files if built["sha256"][f] != shipped["sha256"].get(f)]
    for f in files:
        log(f"  {'same     ' if f not in bad else 'DIFFERENT'} {f}")
    log(
        f"the rebuild matches the shipped family ({len(files)} files)"
        if not bad
        else f"{len(bad)} file(s) differ from the shipped family"
    )
    return 1 if bad else 0
