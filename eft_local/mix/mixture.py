"""The EFT mixture: which models play which role and how much each one weighs.

    z = reference + β·(base − reference) + Σ_i α_i·(chat_i − reference_i)

Roles are named: ``base``, ``reference`` (the main small pre-trained model), ``chat`` (the
delta named "chat", weighted by α), and for every further delta NAME the roles ``NAME``
(its fine-tuned model) and optionally ``NAME.reference`` (its own pre-trained model; the
main reference otherwise). Expanded, z is a weighted sum of the models' logit rows; a model
whose weight is exactly 0 need not run at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from eft_local.errors import UserError

BASE, REFERENCE, CHAT = "base", "reference", "chat"
ROLES = (BASE, CHAT, REFERENCE)  # the one-delta formula's roles; further deltas add NAME / NAME.reference
REF_SUFFIX = ".reference"
ROLE_HELP = {
    BASE: "large pre-trained model (knowledge)",
    CHAT: "small fine-tuned model (behaviour)",
    REFERENCE: "small base the chat model was tuned from",
}
DELTA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def role_help(role: str) -> str:
    """What a role's model is, in a few words (help texts, the app's load panel)."""
    if role in ROLE_HELP:
        return ROLE_HELP[role]
    if role.endswith(REF_SUFFIX):
        return f"pre-trained model delta {role.removesuffix(REF_SUFFIX)} was tuned from"
    return "fine-tuned model (a behaviour delta)"


def check_delta_name(name: str, where: str) -> str:
    """The one rule for a delta's name; ``where`` says where the name came from."""
    if not isinstance(name, str) or not DELTA_NAME.match(name) or name in (BASE, REFERENCE):
        raise UserError(
            f"{where}: delta name {name!r} must start with a letter and use letters, digits, - or _ "
            f"(at most 32), and not be {BASE} or {REFERENCE}"
        )
    return name


def is_role_name(role: str) -> bool:
    """base, chat, reference, a delta NAME or NAME.reference."""
    name = role.removesuffix(REF_SUFFIX)
    return role in ROLES or (DELTA_NAME.match(name) is not None and name not in (BASE, REFERENCE))


def check_known_deltas(names: Iterable[str], deltas: Iterable[str], where: Callable[[str], str]) -> None:
    """Every name in ``names`` is one of ``deltas`` other than chat; ``where(name)`` says where it came from."""
    others = [d for d in deltas if d != CHAT]
    for name in names:
        if name not in others:
            raise UserError(f"{where(name)}: there is no delta named {name} (deltas besides chat: {', '.join(others) or 'none'})")


@dataclass(frozen=True)
class Delta:
    """One behaviour delta: a fine-tuned model minus the model it was tuned from."""

    name: str
    chat: str  # role of the fine-tuned model
    reference: str  # role of its pre-trained model


def is_delta_role(role: str) -> bool:
    return role not in (BASE, REFERENCE) and not role.endswith(REF_SUFFIX)


def deltas_of(roles: Iterable[str]) -> list[Delta]:
    """The deltas a set of role names describes, "chat" first."""
    roles = list(roles)
    names = sorted((r for r in roles if is_delta_role(r)), key=lambda r: r != CHAT)
    out = []
    for name in names:
        own = name + REF_SUFFIX
        out.append(Delta(name, name, own if own in roles else REFERENCE))
    return out


def role_order(roles: Iterable[str]) -> list[str]:
    """Deltas' chat models, base, reference, deltas' own references: the loading order."""
    roles = list(roles)
    chats = [d.chat for d in deltas_of(roles)]
    refs = sorted(r for r in roles if r.endswith(REF_SUFFIX))
    return chats + [r for r in (BASE, REFERENCE) if r in roles] + refs


def check_roles(roles: Iterable[str]) -> None:
    roles = set(roles)
    missing = [r for r in (BASE, REFERENCE) if r not in roles]
    if missing:
        raise UserError(f"missing model for role(s): {', '.join(missing)}")
    if not deltas_of(roles):
        raise UserError("missing model for role(s): chat (or at least one --delta NAME=GGUF)")
    orphans = [r for r in roles if r.endswith(REF_SUFFIX) and r.removesuffix(REF_SUFFIX) not in roles]
    if orphans:
        raise UserError(f"--delta-reference {orphans[0].removesuffix(REF_SUFFIX)}=… has no matching --delta")


def coefficients(
    deltas: Iterable[Delta], weight: Callable[[str], float], beta: float, model_of: Mapping[str, str]
) -> dict[str, float]:
    """Each model's weight in the expanded formula (roles sharing a model add up).

    Summed exactly (fractions of the floats) so that a mathematically zero weight — e.g.
    the reference at α = 0.3, β = 0.7 — is exactly 0 and that model is skipped.
    """
    total: dict[str, Fraction] = {}

    def add(role: str, w: float) -> None:
        key = model_of[role]
        total[key] = total.get(key, Fraction(0)) + Fraction(w)

    add(BASE, beta)
    add(REFERENCE, 1 - Fraction(beta))
    for d in deltas:
        w = weight(d.name)
        add(d.chat, w)
        add(d.reference, -Fraction(w))
    return {k: float(v) for k, v in total.items()}


def pick_drafter(deltas: list[Delta], weight: Callable[[str], float], draft_with: str | None) -> Delta:
    """The delta whose chat model drafts: the one named, else the largest |α| (first on ties)."""
    if draft_with is not None:
        for d in deltas:
            if d.name == draft_with:
                return d
        raise UserError(f"--draft-with {draft_with}: no such delta (deltas: {', '.join(d.name for d in deltas)})")
    return max(deltas, key=lambda d: abs(weight(d.name)))


def describe(weights: Mapping[str, float], alpha: float | None, beta: float) -> str:
    """Short text of a mix, e.g. ``α=1 β=1 helpful=0.5``."""
    parts = ([f"α={alpha:g}"] if alpha is not None else []) + [f"β={beta:g}"]
    parts += [f"{name}={w:g}" for name, w in weights.items()]
    return " ".join(parts)
