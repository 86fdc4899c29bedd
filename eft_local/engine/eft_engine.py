"""``EftEngine``: the models of an EFT mixture, loaded once, behind one ``generate``.

What one generation does with them (the rounds of naive and speculative decoding) is
``engine/generation.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from eft_local.engine.config import GenerationConfig
from eft_local.engine.events import Event, FinishedEvent, GenStats
from eft_local.engine.generation import Generation
from eft_local.errors import EngineBusy, UserError
from eft_local.llama.adapter import LlamaModel
from eft_local.llama.prompts import role_prompts
from eft_local.llama.vocab import SharedVocab, check_vocab
from eft_local.mix.mixture import Delta, check_known_deltas, check_roles, coefficients, deltas_of, role_order
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS, Fixable


def gpu_layers(requested: int | None, rpc: Mapping[str, Sequence[str]] | None = None) -> int:
    """Layers each model offloads: ``requested``, or by default (None) all of them when llama.cpp
    can place them on a local GPU or RPC servers hold a role, else 0 (the CPU)."""
    if requested is not None:
        return int(requested)
    from eft_local.llama.rpc import has_local_gpu

    return -1 if rpc or has_local_gpu() else 0


class EftEngine:
    """The models of an EFT mixture behind one generate() that yields events.

    ``roles`` maps role names (see ``mixture``) to models; roles that share a file share one
    model, so ``models`` — the distinct contexts, each named after its first role — is what
    gets evaluated: a shared reference once per position, not once per role.
    """

    def __init__(self, roles: Mapping[str, LlamaModel]) -> None:
        check_roles(roles)
        order = role_order(roles)
        self.roles = {r: roles[r] for r in order}
        self.models: dict[str, LlamaModel] = {}
        self.model_of: dict[str, str] = {}
        for role, model in self.roles.items():
            name = next((n for n, m in self.models.items() if m is model), role)
            self.models.setdefault(name, model)
            self.model_of[role] = name
        self.deltas: list[Delta] = deltas_of(order)
        self.vocab: SharedVocab = check_vocab(self.models)
        self.can_rollback = all(m.supports_rollback for m in self.models.values())
        self._running = threading.Lock()

    @classmethod
    def load(
        cls,
        paths: Mapping[str, str | Path],
        *,
        n_ctx: int = SETTINGS["n_ctx"].default,
        n_gpu_layers: int | None = SETTINGS["gpu_layers"].default,
        n_threads: int | None = None,
        on_progress: Callable[[str, float], None] | None = None,
        rpc: Mapping[str, Sequence[str]] | None = None,
        n_seq: int = 1,
    ) -> EftEngine:
        """Load every role's model, one context per distinct (file, prompt kind, RPC servers).

        Fine-tuned models see their chat template and the others plain/templated text, so a
        file in both kinds of role needs two contexts (the weights are memory-mapped, so
        shared in RAM); the same file in two roles of one kind is loaded once. ``rpc``:
        role -> llama.cpp RPC servers that hold its layers. ``n_seq`` > 1: every context
        holds that many sequences of ``n_ctx`` each (``scheduler.Scheduler``).
        ``n_gpu_layers`` None: all layers when a GPU (or an RPC server) can take them, else 0
        (``gpu_layers``, the command line's default too).
        """
        check_roles(paths)
        rpc = rpc or {}
        n_gpu_layers = gpu_layers(n_gpu_layers, rpc)
        chats = {d.chat for d in deltas_of(paths)}
        loaded: dict[tuple, LlamaModel] = {}
        roles: dict[str, LlamaModel] = {}
        try:
            for role in sorted(role_order(paths), key=lambda r: not rpc.get(r)):  # remote first: fail fast
                path = Path(paths[role]).expanduser()
                servers = tuple(rpc.get(role, ()))
                key = (path.resolve(), role in chats, servers)
                if key not in loaded:
                    cb = (lambda f, r=role: on_progress(r, f)) if on_progress else None
                    loaded[key] = LlamaModel(
                        path,
                        n_ctx=n_ctx,
                        n_gpu_layers=n_gpu_layers,
                        n_threads=n_threads,
                        progress=cb,
                        rpc_servers=servers,
                        n_seq=n_seq,
                    )
                roles[role] = loaded[key]
            return cls(roles)
        except BaseException:
            for m in loaded.values():
                m.close()
            raise

    def reset(self) -> None:
        """Empty every KV cache, every sequence (after a failed decode left one in an unknown state)."""
        for m in self.models.values():
            m.clear()

    def close(self) -> None:
        for m in self.models.values():
            m.close()

    @property
    def chat(self) -> LlamaModel:
        """The first delta's fine-tuned model: its template, EOG tokens and pieces are used."""
        return self.roles[self.deltas[0].chat]

    @property
    def chat_name(self) -> str:
        """Name of the main chat model's context (its prompt ids are the ones reported)."""
        return self.model_of[self.deltas[0].chat]

    @property
    def delta_names(self) -> list[str]:
        return [d.name for d in self.deltas]

    @property
    def n_ctx(self) -> int:
        """The context every model holds: no sequence (prompt and generated tokens) outgrows it."""
        return min(m.n_ctx for m in self.models.values())

    def coefficients(self, params: SamplingParams) -> dict[str, float]:
        """Each distinct model's weight in the expanded EFT formula for ``params``."""
        return coefficients(self.deltas, params.weight, params.beta, self.model_of)

    def check_weights(self, params: SamplingParams, where: Callable[[str], str] = "weights.{}".format) -> None:
        check_known_deltas(params.weights, self.delta_names, where)

    def prompt(
        self, *, messages=None, raw: str | None = None, style: str = "template", plain_content: bool = False
    ) -> dict[str, list[int]]:
        chats = [self.model_of[d.chat] for d in self.deltas]
        return role_prompts(self.models, messages=messages, raw=raw, style=style, chat_roles=chats, plain_content=plain_content)

    def fit_prompt(self, messages, *, style: str = "template", reserve: int = 256) -> tuple[dict[str, list[int]], int]:
        """The prompt for the most recent turns that leave ``reserve`` tokens free in every
        context: the oldest non-system messages are dropped first. Returns (prompt, #dropped)."""
        messages = list(messages)
        system = [m for m in messages if m["role"] == "system"][:1]
        rest = [m for m in messages if m not in system]
        for dropped in range(len(rest)):
            prompt = self.prompt(messages=system + rest[dropped:], style=style)
            if all(len(prompt[r]) + reserve <= m.n_ctx for r, m in self.models.items()):
                return prompt, dropped
        raise Fixable(
            f"the last message alone does not fit in n_ctx {self.chat.n_ctx} with {reserve} tokens to answer", "raise {n_ctx}"
        )

    def context_used(self) -> dict[str, tuple[int, int]]:
        return {r: (m.n_past, m.n_ctx) for r, m in self.models.items()}

    def generate(
        self,
        prompt: Mapping[str, list[int]],
        config: GenerationConfig,
        rng: np.random.Generator,
        cancel: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """Yield TokenEvents, periodic StatsEvents and one FinishedEvent.

        One generation at a time: the three contexts and the scratch buffers are shared, so
        a second concurrent call fails with EngineBusy instead of corrupting the first."""
        if not self._running.acquire(blocking=False):
            raise EngineBusy("the engine is already generating (one generation at a time)")
        try:
            try:
                run = Generation(self, prompt, config, rng, cancel)
            except UserError as e:
                yield FinishedEvent("error", "", [], GenStats(), str(e), e)
                return
            yield from run.events()
        finally:
            self._running.release()
