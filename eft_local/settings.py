"""One definition per setting: name, type, default, range, help.

CLI flags, profile ``defaults``, JSONL row overrides, the chat app's fields and HTTP request
fields are all derived from ``SETTINGS`` and checked by ``Setting.check`` — so a non-finite
or out-of-range number gets the same one-line error wherever it comes from, naming the
place (``--alpha``, ``models.toml: profile 'x': defaults.alpha``, ``line 3: alpha``, …).
The library's own objects (``SamplingParams``, ``GenerationConfig``) check their fields by
the same definitions, strictly (``strict=True``: typed values only, no text to parse).
A bad value is a ``BadValue`` (a ``ValueError``), a value of the wrong type a ``BadType``
(a ``TypeError``); both are ``UserError``s, one line for a front end to print.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eft_local.errors import UserError, check_text

TOP_P_MODES = ("eft", "base")
PROMPT_STYLES = ("template", "transcript")
MAX_SEED = 2**63 - 1
# Any real weight is meaningful (negative steers away), but past this the weighted logits
# overflow float32 (inf − inf = nan): refused like a non-finite number.
MAX_WEIGHT = 1000.0
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for logprobs / top_logprobs


class BadValue(UserError, ValueError):
    """A setting's value is out of its range, not finite, or not one of its choices."""


class BadType(UserError, TypeError):
    """A setting's value is of the wrong type (text for a number, a bool for a number, …)."""


class Fixable(UserError):
    """A fact that a setting can change (the context is full, speculation is impossible, …).

    ``str()`` is the fact alone: what a library caller reads. ``fix`` says what to do, with
    ``{name}`` for each setting (or front-end option: ``raw``, ``verbose``) it names, e.g.
    ``"raise {n_ctx}"``; each front end words it in its own terms with ``advice``."""

    def __init__(self, fact: str, fix: str) -> None:
        super().__init__(fact)
        self.fix = fix


def cli_name(key: str) -> str:
    """How the command line names a setting, or one of its own options (``raw``, ``verbose``)."""
    return SETTINGS[key].cli_flag if key in SETTINGS else "--" + key.replace("_", "-")


def field_name(key: str) -> str:
    """How an HTTP client changes it: a request field, else the server's own flag (its operator's)."""
    if key == "raw":
        return "/v1/completions (the prompt as it is)"
    setting = SETTINGS.get(key)
    return f"'{key}'" if setting is not None and setting.per_prompt else f"the server's {cli_name(key)}"


def advice(error: BaseException, name: Callable[[str], str] = cli_name) -> str:
    """``error``'s message; for a ``Fixable`` one, what to do, each setting named by ``name``
    (the command line's flags unless a front end names them otherwise)."""
    if not isinstance(error, Fixable):
        return str(error)
    keys = {field for _, field, _, _ in string.Formatter().parse(error.fix) if field}
    return f"{error}; {error.fix.format(**{key: name(key) for key in keys})}"


@dataclass(frozen=True)
class Setting:
    """A user-settable value and every rule about it.

    ``scope``: ``generation`` (may change per prompt/request), ``load`` (fixed once models
    load), ``run`` (per command) or ``request`` (a field of an HTTP request only: what the
    answer reports, not how it is generated). ``per_prompt`` settings may be overridden by a JSONL row
    and an HTTP request. ``nullable``: ``None`` is meaningful (adaptive, auto, unseeded).
    """

    name: str
    type: type
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    scope: str = "generation"
    per_prompt: bool = False
    flag: str | None = None  # CLI flag when it isn't --name-with-dashes
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any, where: str | None = None, *, strict: bool = False) -> Any:
        """``value`` converted to this setting's type, or one ``BadType``/``BadValue`` naming
        ``where``. ``strict`` (the library's objects): no text is parsed as a number and no
        float stands for an integer; NumPy numbers count as numbers."""
        where = where or self.cli_flag
        if value is None:
            if self.nullable:
                return None
            raise BadType(f"{where} needs a value")
        if self.type is bool:
            if not isinstance(value, bool):
                raise BadType(f"{where} must be true or false, got {_show(value)}")
            return value
        if self.type is str:
            return self._check_str(value, where)
        if self.type is list:
            return self._check_list(value, where)
        number = _number(value, self.type, where, strict)
        self._check_range(number, where)
        return number

    def holds(self, value: Any) -> bool:
        """True when ``value`` already is a checked value of this setting: exactly its type, in
        range (a quick test for objects rebuilt often; anything else goes through ``check``)."""
        if type(value) is not self.type or self.type not in (int, float):
            return False
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return low and high and (self.type is int or math.isfinite(value))

    def _check_str(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise BadType(f"{where} must be a string, got {_show(value)}")
        _unicode(value, where)
        if self.choices and value not in self.choices:
            raise BadValue(f"{where} must be one of {', '.join(self.choices)}, got {_show(value)}")
        return value

    def _check_list(self, value: Any, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise BadType(f"{where} must be a string or a list of non-empty strings, got {_show(value)}")
        if not all(value):
            raise BadValue(f"{where} must be a string or a list of non-empty strings, got {_show(value)}")
        for text in value:
            _unicode(text, where)
        return tuple(value)

    def _check_range(self, x: float, where: str) -> None:
        below = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        above = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        if below or above:
            raise BadValue(f"{where} must be {self.range_text()}, got {self._fmt(x)}")

    def range_text(self) -> str:
        lo, hi = self._fmt(self.lo), self._fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{lo}, {hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "a finite number"

    def _fmt(self, x: float | None) -> str:
        """A bound or value as a message shows it: integers whole (16777216, not 1.67772e+07)."""
        if x is None:
            return ""
        return str(int(x)) if self.type is int else f"{x:g}"


def _unicode(text: str, where: str) -> None:
    try:
        check_text(text, where)
    except UserError as e:  # a lone surrogate: a bad value of the right type
        raise BadValue(str(e)) from None


def _number(value: Any, kind: type, where: str, strict: bool = False) -> float | int:
    """Accept ints for floats and integral floats for ints; never bools, never nan/inf.

    An integer too large for a float (JSON and TOML allow 400 digits) is refused here like
    any out-of-range number, never converted (``float(10**400)`` raises OverflowError).
    ``strict``: text is not parsed, a float is no integer, and NumPy scalars are numbers.
    """
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str) and not strict:
        value = _parse_number(value, kind, where)
    elif strict and isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)) and hasattr(value, "item"):
        value = value.item()  # a NumPy scalar (np.float32, np.int64)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadType(f"{where} must be {what}, got {_show(value)}")
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT:
            raise BadValue(f"{where} is too large: {_show(value)}")
        return value if kind is int else float(value)
    if kind is int and strict:
        raise BadType(f"{where} must be {what}, got {_show(value)}")
    if not math.isfinite(value):
        raise BadValue(f"{where} must be a finite number, got {value}")
    if kind is int:
        if value != int(value):
            raise BadType(f"{where} must be {what}, got {value!r}")
        return int(value)
    return float(value)


# Larger than any setting's range (and than a float64's exact integers), far below float overflow.
_MAX_EXACT = 2**64


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` for a message, kept short: a 400-digit number, a long string or a deeply
    nested list stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"{str(value)[:12]}… ({len(str(abs(value)))} digits)"
    try:
        text = repr(value)
    except RecursionError:
        return f"a too deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_number(text: str, kind: type, where: str) -> float | int:
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        raise BadType(f"{where} must be {'an integer' if kind is int else 'a number'}, got {_show(text)}") from None


def _max_threads() -> int:
    return max(256, os.cpu_count() or 1)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # -- EFT and sampling (per prompt)
        Setting(
            "alpha",
            float,
            1.0,
            "behaviour: weight of the fine-tuning delta chat − reference",
            lo=-MAX_WEIGHT,
            hi=MAX_WEIGHT,
            per_prompt=True,
        ),
        Setting(
            "beta",
            float,
            1.0,
            "knowledge: weight of the pre-training delta base − reference",
            lo=-MAX_WEIGHT,
            hi=MAX_WEIGHT,
            per_prompt=True,
        ),
        Setting("temperature", float, 0.7, "0 = greedy", lo=0.0, hi=100.0, per_prompt=True),
        Setting("top_p", float, 0.95, "nucleus sampling (1 = off)", lo=0.0, hi=1.0, lo_open=True, per_prompt=True),
        Setting("top_k", int, 0, "keep the k most likely tokens (0 = off)", lo=0, hi=2**31 - 1, per_prompt=True),
        Setting(
            "min_p",
            float,
            0.0,
            "drop tokens below min-p × the top token's probability",
            lo=0.0,
            hi=1.0,
            hi_open=True,
            per_prompt=True,
        ),
        Setting(
            "typical_p", float, 1.0, "locally typical sampling mass (1 = off)", lo=0.0, hi=1.0, lo_open=True, per_prompt=True
        ),
        Setting(
            "top_p_mode",
            str,
            "eft",
            "top-p on the EFT distribution (eft) or on the base model alone (base, DExperts)",
            choices=TOP_P_MODES,
            per_prompt=True,
        ),
        Setting(
            "seed",
            int,
            None,
            "RNG seed: prompt i uses (seed, i), so reruns are identical",
            lo=0,
            hi=MAX_SEED,
            nullable=True,
            per_prompt=True,
        ),
        Setting("max_tokens", int, 256, "tokens to generate per prompt", lo=1, hi=1 << 24, per_prompt=True),
        Setting(
            "draft_tokens",
            int,
            None,
            "speculative block: 0 = naive EFT; default adaptive",
            lo=0,
            hi=64,
            nullable=True,
            per_prompt=True,
            metavar="K",
        ),
        Setting("stop", list, (), "stop string (repeatable)", per_prompt=True, metavar="TEXT"),
        Setting(
            "prompt_style",
            str,
            "template",
            "what base/reference see: the chat template or a plain transcript",
            choices=PROMPT_STYLES,
        ),
        Setting("system_prompt", str, None, "system prompt", nullable=True, flag="--system", metavar="TEXT"),
        # -- loading
        Setting("n_ctx", int, 4096, "context length per model", lo=16, hi=1 << 24, scope="load"),
        Setting(
            "gpu_layers",
            int,
            None,
            "layers to offload to the GPU per model (-1 = all; default: all when llama.cpp has GPU offload, else 0)",
            lo=-1,
            hi=1 << 16,
            nullable=True,
            scope="load",
        ),
        Setting(
            "threads",
            int,
            None,
            "CPU threads per model (default: half the logical CPUs)",
            lo=1,
            hi=_max_threads(),
            nullable=True,
            scope="load",
        ),
        # -- per command
        Setting(
            "parallel",
            int,
            None,
            "sequences generated at once, sharing each speculative round: prompts (run) or requests (serve) "
            "(default 1 on a CPU, 8 on a GPU)",
            lo=1,
            hi=256,
            nullable=True,
            scope="run",
            metavar="N",
        ),
        # -- what an HTTP answer reports (OpenAI/vLLM fields): log-probabilities of the EFT
        #    distribution at T = 1, no filters (mix/logprobs.py)
        Setting(
            "logprobs",
            int,
            None,
            "completions: report each token's log-probability and this many top alternatives",
            lo=0,
            hi=MAX_TOP_LOGPROBS,
            nullable=True,
            scope="request",
        ),
        Setting(
            "top_logprobs",
            int,
            0,
            "chat (with logprobs: true): this many top alternatives per token",
            lo=0,
            hi=MAX_TOP_LOGPROBS,
            scope="request",
        ),
        Setting(
            "echo", bool, False, "completions: the prompt's tokens come first, with their log-probabilities", scope="request"
        ),
        Setting(
            "return_tokens_as_token_ids",
            bool,
            False,
            "log-probabilities name tokens as 'token_id:N' (vLLM's field): exact for tokens that are not whole UTF-8",
            scope="request",
        ),
    )
}
GENERATION_SETTINGS = tuple(name for name, s in SETTINGS.items() if s.scope == "generation")
LOAD_SETTINGS = tuple(name for name, s in SETTINGS.items() if s.scope == "load")
# Keys a profile's [defaults] table may set (every one takes effect), plus old spellings.
PROFILE_KEYS = tuple(name for name, s in SETTINGS.items() if s.scope != "request")
REQUEST_KEYS = tuple(name for name, s in SETTINGS.items() if s.scope == "request")
PROFILE_ALIASES = {"n_gpu_layers": "gpu_layers"}
# Keys a JSONL row (and an HTTP request) may override per prompt; ``weights`` is separate.
ROW_KEYS = tuple(name for name, s in SETTINGS.items() if s.per_prompt)
GRID_KEYS = ("alpha", "beta", "temperature", "top_p", "seed")


def check(name: str, value: Any, where: str | None = None) -> Any:
    return SETTINGS[name].check(value, where)


def check_weight(name: str, value: Any, where: str, *, strict: bool = False) -> float:
    """A delta weight: any finite real number (negative steers away) up to ±MAX_WEIGHT."""
    w = float(_number(value, float, where, strict))
    if abs(w) > MAX_WEIGHT:
        raise BadValue(f"{where} must be in [{-MAX_WEIGHT:g}, {MAX_WEIGHT:g}], got {w:g}")
    return w


def check_weights(raw: Any, where: str, *, strict: bool = False) -> dict[str, float]:
    """An object NAME → weight (JSONL ``weights``, HTTP ``weights``, profile defaults); which
    names exist is the mixture's to say (``mixture.check_known_deltas``)."""
    if not isinstance(raw, Mapping):
        raise BadType(f"{where} must be an object mapping delta names to numbers, got {_show(raw)}")
    if strict and not all(isinstance(name, str) for name in raw):
        raise BadType(f"{where} must map delta names (strings) to numbers, got {_show(raw)}")
    return {str(name): check_weight(name, value, f"{where}.{name}", strict=strict) for name, value in raw.items()}


def check_mapping(raw: Mapping[str, Any], keys: Iterable[str], where: str, fmt: Callable[[str], str] = str) -> dict[str, Any]:
    """Check the known ``keys`` of ``raw`` (e.g. a profile's defaults); refuse unknown keys."""
    keys = tuple(keys)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = PROFILE_ALIASES.get(key, key)
        if name not in keys:
            raise UserError(f"{where}: unknown setting {key!r} (known: {', '.join(keys)})")
        out[name] = check(name, value, f"{where}{fmt(key)}")
    return out


# -- named variants: one served mix, many settings (``--variant``, a profile's ``variants``) --------
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")
VARIANT_FORM = "NAME:KEY=V[,KEY=V...] (KEY: a per-prompt setting such as alpha, beta, temperature, top_p, seed, or weight.NAME)"


def check_variant(name: str, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A variant's settings layer (what a request's own fields go on top of), every value
    checked by its setting; which delta names exist is the model set's to say."""
    if not isinstance(name, str) or not VARIANT_NAME.match(name):
        raise UserError(
            f"{where}: variant name {name!r} must start with a letter or digit and use letters, digits, . _ : + - (at most 64)"
        )
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a table of settings, e.g. {{ beta = 1.5 }}")
    layer: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("weight."):
            delta = key.removeprefix("weight.")
            w = check_weight(delta, value, f"{where}.{key}")
            if delta == "chat":
                layer["alpha"] = w
            else:
                layer.setdefault("weights", {})[delta] = w
        elif key == "weights":
            layer["weights"] = {**layer.get("weights", {}), **check_weights(value, f"{where}.weights")}
        elif key in ROW_KEYS:
            layer[key] = check(key, value, f"{where}.{key}")
        else:
            raise UserError(f"{where}: unknown key {key!r} (use {', '.join(ROW_KEYS)} or weight.NAME)")
    return layer


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``--variant NAME:KEY=V[,KEY=V...]`` -> (name, settings layer)."""
    name, sep, spec = text.partition(":")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise UserError(f"--variant {text!r}: expected {VARIANT_FORM}")
    pairs: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UserError(f"--variant {text!r}: {part!r} is not KEY=V; expected {VARIANT_FORM}")
        if key.strip() in pairs:
            raise UserError(f"--variant {name}: {key.strip()} given twice")
        pairs[key.strip()] = value.strip()
    return name, check_variant(name, pairs, f"--variant {name}")


def defaults() -> dict[str, Any]:
    return {name: s.default for name, s in SETTINGS.items()}
