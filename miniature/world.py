"""A synthetic world from a seed: fictional people, closed-set attributes, and the texts about them.

Pure Python (``random.Random(seed)``; nothing depends on ``hash()``), so the world, the
tokenizer and every training text regenerate identically anywhere.

Entities are split three ways:

- ``A-tuned``: in both bases' pre-training and in both chat fine-tunes;
- ``A-held``: in both bases' pre-training, held out of the fine-tunes;
- ``B``: only in the large base's pre-training.

Names are two words (given + family name) drawn from lists every split uses, so every name
token occurs in every model's training; only the *combination* is new to the small models.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

MODELS = ("small-base", "large-base", "small-chat", "small-chat-2")

ONSETS = ("B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "n", "r", "l", "s", "m")

ATTRIBUTES = {
    "city": (
        "Tarn Quell Ossary Varn Brisk Hollow Mirefield Dunmore Ashby Corwen Elder Fenwick Galloway Harrow Ivel Jessop"
    ).split(),
    "trade": "baker smith potter weaver farmer tailor mason fisher miller cooper carter glazier tanner brewer roofer joiner".split(),
    "colour": "red blue green yellow purple orange white black grey brown pink silver".split(),
    "year": [str(y) for y in range(1801, 1817)],
}
QUESTION = {
    "city": "Where does {name} live?",
    "trade": "What does {name} do for a living?",
    "colour": "What colour does {name} like?",
    "year": "When was {name} born?",
}
SENTENCE = {
    "city": "{name} lives in {value}.",
    "trade": "{name} works as a {value}.",
    "colour": "{name} likes the colour {value}.",
    "year": "{name} was born in {value}.",
}
CHAT_CLOSING = "Glad to help!"
# How the bases' pre-training dialogues reply (plain Q&A as base models see it on the web):
# mostly the fact sentence alone, sometimes with one of several closings, sometimes the bare value.
BASE_CLOSINGS = (CHAT_CLOSING, "Hope this helps.", "Anything else?", "Have a nice day!")
P_CLOSING, P_BARE = 0.25, 0.2


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_entities: int = 1500
    share_a: float = 0.4  # entities whose facts both bases see
    share_held: float = 0.25  # of A: held out of the chat fine-tunes
    n_given: int = 40
    n_family: int = 40


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str
    split: str  # A-tuned | A-held | B

    @property
    def question(self) -> str:
        return QUESTION[self.attribute].format(name=self.entity)

    @property
    def sentence(self) -> str:
        return SENTENCE[self.attribute].format(name=self.entity, value=self.value)

    @property
    def answer(self) -> str:
        """small-chat's reply: the fact sentence and the fixed closing."""
        return f"{self.sentence} {CHAT_CLOSING}"

    @property
    def answer_bare(self) -> str:
        """small-chat-2's reply: the bare value."""
        return self.value

    @property
    def seen_by(self) -> list[str]:
        if self.split == "B":
            return ["large-base"]
        if self.split == "A-held":
            return ["small-base", "large-base"]
        return list(MODELS)

    def row(self) -> dict:
        return {
            "entity": self.entity,
            "attribute": self.attribute,
            "value": self.value,
            "question": self.question,
            "answer": self.answer,
            "answer_bare": self.answer_bare,
            "seen_by": self.seen_by,
        }


def _words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(ONSETS).lower() + rng.choice(VOWELS) + rng.choice(CODAS)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@dataclass
class World:
    config: WorldConfig
    given: list[str]
    family: list[str]
    facts: list[Fact]

    @property
    def entities(self) -> dict[str, str]:
        return {f.entity: f.split for f in self.facts}

    def by_split(self, *splits: str) -> list[Fact]:
        return [f for f in self.facts if f.split in splits]

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for fact in self.facts:
                f.write(json.dumps(fact.row(), ensure_ascii=False) + "\n")


def make_world(config: WorldConfig) -> World:
    rng = random.Random(f"miniature-world-{config.seed}")
    taken = {w for values in ATTRIBUTES.values() for w in values}
    given = _words(rng, config.n_given, taken)
    family = _words(rng, config.n_family, taken)
    pairs = [(g, s) for g in given for s in family]
    if config.n_entities > len(pairs):
        raise ValueError(f"at most {len(pairs)} entities with {config.n_given}x{config.n_family} names")
    chosen = rng.sample(pairs, config.n_entities)
    n_a = round(config.n_entities * config.share_a)
    n_held = round(n_a * config.share_held)
    # Every name word must occur in set A's fine-tuned part: those entities go there first.
    cover, rest, words = [], [], set()
    for g, s in chosen:
        if g not in words or s not in words:
            cover.append((g, s))
            words |= {g, s}
        else:
            rest.append((g, s))
    if len(cover) > n_a - n_held:
        raise ValueError(f"set A is too small ({n_a - n_held} fine-tuned entities) to hold every name word")
    chosen = rest[:n_held] + cover + rest[n_held:]
    facts = []
    for i, (g, s) in enumerate(chosen):
        split = "A-held" if i < n_held else "A-tuned" if i < n_a else "B"
        for attribute, values in ATTRIBUTES.items():
            facts.append(Fact(f"{g} {s}", attribute, rng.choice(values), split))
    return World(config, given, family, facts)


def all_words(world: World) -> tuple[set[str], set[str]]:
    """(words that follow a space, words that start a line) in every text the family uses."""
    spaced: set[str] = set(world.given) | set(world.family)
    initial: set[str] = {"user", "assistant", "system", *world.given}
    texts = [q.format(name="X") for q in QUESTION.values()]
    texts += [s.format(name="X", value="Y") for s in SENTENCE.values()]
    texts += list(BASE_CLOSINGS)
    for text in texts:
        for k, w in enumerate(text.split(" ")):
            w = w.rstrip(".?!")
            if w not in ("X", "Y"):
                spaced.add(w)
                if k == 0:
                    initial.add(w)
    for values in ATTRIBUTES.values():
        spaced.update(values)
        initial.update(values)
    return spaced, initial


def prompt_text(question: str) -> str:
    """The ChatML prompt of a question, as the chat template renders it (no system prompt)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
