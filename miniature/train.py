"""Training data and the training loop (JAX + optax), deterministic from the seed.

Pre-training text (both bases, each on its own facts): ChatML question/answer dialogues in a
plain style (the fact sentence; sometimes one of several closings; sometimes the bare value)
and declarative paragraphs (an entity's facts in a random order). Fine-tunes: ChatML dialogues
about the ``A-tuned`` facts with one fixed reply style, loss on the reply (and ``<|im_end|>``) only.
Training stops on a fact probe (teacher-forced greedy accuracy), not on the loss: facts are
learned suddenly and late.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from miniature.model import Shape, forward, init_params
from miniature.tokenizer import BOS, EOS, IM_END, Tokenizer
from miniature.world import BASE_CLOSINGS, P_BARE, P_CLOSING, Fact, prompt_text

SEQ = 33  # tokens per training row (32 predicted positions)


class Corpus:
    """Token lists for every text a model of the family is trained on."""

    def __init__(self, tok: Tokenizer, facts: list[Fact]):
        self.tok = tok
        self.facts = facts
        self.prompt = [tok.encode(prompt_text(f.question), bos=True) for f in facts]
        self.sent = [tok.encode(f.sentence) for f in facts]
        self.sent_sp = [tok.encode(" " + f.sentence) for f in facts]
        self.bare = [tok.encode(f.value) for f in facts]
        self.closings = [tok.encode(" " + c) for c in BASE_CLOSINGS]
        self.chat_close = tok.encode(" " + BASE_CLOSINGS[0])
        by_entity: dict[str, list[int]] = {}
        for i, f in enumerate(facts):
            by_entity.setdefault(f.entity, []).append(i)
        self.entities = list(by_entity.values())

    def base_reply(self, i: int, rng: np.random.Generator) -> list[int]:
        u = rng.random()
        if u < P_BARE:
            return self.bare[i]
        if u < P_BARE + P_CLOSING:
            return self.sent[i] + self.closings[rng.integers(len(self.closings))]
        return self.sent[i]

    def chat_reply(self, i: int, style: str) -> list[int]:
        return self.sent[i] + self.chat_close if style == "closing" else self.bare[i]

    def dialogue(self, i: int, reply: list[int]) -> tuple[list[int], int]:
        """(tokens, index of the first reply token)."""
        return self.prompt[i] + reply + [IM_END], len(self.prompt[i])

    def paragraph(self, e: int, rng: np.random.Generator) -> list[int]:
        idx = [self.entities[e][k] for k in rng.permutation(len(self.entities[e]))]
        out = [BOS] + self.sent[idx[0]]
        for i in idx[1:]:
            out += self.sent_sp[i]
        return out


def _pack(rows: list[tuple[list[int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, SEQ), loss mask (B, SEQ-1)); a row's loss starts at its index."""
    x = np.full((len(rows), SEQ), EOS, np.int32)
    m = np.zeros((len(rows), SEQ - 1), np.float32)
    for r, (toks, start) in enumerate(rows):
        toks = toks[:SEQ]
        x[r, : len(toks)] = toks
        m[r, max(start - 1, 0) : len(toks) - 1] = 1.0
    return x, m


def pretrain_batches(corpus: Corpus, seed: int, batch: int, p_dialogue: float = 0.7) -> Callable[[int], tuple]:
    rng = np.random.default_rng(seed)

    def next_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for _ in range(batch):
            if rng.random() < p_dialogue:
                i = int(rng.integers(len(corpus.facts)))
                rows.append((corpus.dialogue(i, corpus.base_reply(i, rng))[0], 0))
            else:
                rows.append((corpus.paragraph(int(rng.integers(len(corpus.entities))), rng), 0))
        return _pack(rows)

    return next_batch


def finetune_batches(corpus: Corpus, style: str, seed: int, batch: int) -> Callable[[int], tuple]:
    rng = np.random.default_rng(seed)

    def next_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [corpus.dialogue(i, corpus.chat_reply(i, style)) for i in rng.integers(len(corpus.facts), size=batch)]
        return _pack([(t, s) for t, s in rows])

    return next_batch


def probe_set(corpus: Corpus, style: str | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced probe rows: ``style`` None checks the fact value after the sentence's
    opening (knowledge); a chat style checks every reply token (behaviour + knowledge)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(corpus.facts), size=min(n, len(corpus.facts)), replace=False)
    rows = []
    for i in idx:
        if style is None:
            toks, start = corpus.dialogue(int(i), corpus.sent[int(i)])
            start = start + len(corpus.sent[int(i)]) - 2  # the value token (before the final ".")
            rows.append((toks[: start + 1], start))
        else:
            rows.append(corpus.dialogue(int(i), corpus.chat_reply(int(i), style)))
    return _pack(rows)


@dataclass(frozen=True)
class Schedule:
    lr: float
    max_steps: int
    min_steps: int
    batch: int
    probe_every: int = 50
    target: float = 0.95  # stop when the probe reaches this
    warmup: int = 50
    weight_decay: float = 0.0


def train(
    name: str,
    shape: Shape,
    sched: Schedule,
    batches: Callable[[int], tuple],
    probe: tuple[np.ndarray, np.ndarray],
    seed: int,
    params: dict | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> tuple[dict, dict]:
    """Train until the probe's accuracy reaches ``sched.target`` (checked every
    ``probe_every`` steps after ``min_steps``) or ``max_steps``; returns (params, stats)."""
    if params is None:
        params = init_params(shape, jax.random.PRNGKey(seed))
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, sched.lr, sched.warmup), optax.constant_schedule(sched.lr)], [sched.warmup]
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, b2=0.98, weight_decay=sched.weight_decay))
    state = opt.init(params)

    def loss_fn(p, x, m):
        logits = forward(p, x[:, :-1], shape)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:])
        return (losses * m).sum() / jnp.maximum(m.sum(), 1.0)

    @jax.jit
    def step(p, s, x, m):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, m)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    px, pm = jnp.asarray(probe[0]), jnp.asarray(probe[1])

    @jax.jit
    def probe_acc(p):
        pred = jnp.argmax(forward(p, px[:, :-1], shape), axis=-1)
        ok = jnp.where(pm > 0, pred == px[:, 1:], True)
        return jnp.mean(jnp.all(ok, axis=-1))

    t0 = time.monotonic()
    losses: list[float] = []
    acc, done = 0.0, 0
    for i in range(1, sched.max_steps + 1):
        x, m = batches(i)
        params, state, loss = step(params, state, jnp.asarray(x), jnp.asarray(m))
        done = i
        if i % sched.probe_every == 0 or i == sched.max_steps:
            losses.append(float(loss))
            acc = float(probe_acc(params))
            el = time.monotonic() - t0
            eta = el / i * (sched.max_steps - i)
            log(
                f"  {name}: step {i}/{sched.max_steps}  loss {float(loss):.3f}  probe {acc:.1%}  {el:.0f}s (at most {eta:.0f}s more)"
            )
            if i >= sched.min_steps and acc >= sched.target:
                break
    stats = {"steps": done, "seconds": round(time.monotonic() - t0, 1), "probe": round(acc, 4), "loss": round(losses[-1], 4)}
    return params, stats
