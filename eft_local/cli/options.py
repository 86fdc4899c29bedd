"""What every model-loading command shares: model and sampling flags (derived from
``settings``), resolving a profile and the flags into checked settings, loading the engine."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from eft_local.cli.models import add_profile_args
from eft_local.cli.rpc import add_rpc_args, rpc_endpoints
from eft_local.errors import UserError
from eft_local.mix.mixture import (
    CHAT,
    REF_SUFFIX,
    REFERENCE,
    ROLE_HELP,
    ROLES,
    check_delta_name,
    check_known_deltas,
    deltas_of,
    pick_drafter,
)
from eft_local.settings import GENERATION_SETTINGS, GRID_KEYS, LOAD_SETTINGS, SETTINGS, check_weight


def add_setting(g, name: str, **extra) -> None:
    """A CLI flag derived from the setting's one definition (checked later, with the profile)."""
    st = SETTINGS[name]
    default = "" if st.default in (None, ()) else f" (default {st.default})"
    if st.type is list:
        g.add_argument(st.cli_flag, dest=name, action="append", metavar=st.metavar, help=st.help, **extra)
    else:
        choices = {"choices": st.choices} if st.choices else {}
        g.add_argument(st.cli_flag, dest=name, metavar=st.metavar, help=st.help + default, **choices, **extra)


def model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--profile", help="named model set from models.toml (see `eft-local models`)")
    for role in ROLES:
        g.add_argument(f"--{role}", metavar="GGUF", help=f"{ROLE_HELP[role]} (overrides the profile)")
    g.add_argument(
        "--delta",
        action="append",
        default=[],
        metavar="NAME=CHAT.gguf",
        help="another fine-tuned model: a behaviour delta named NAME (repeatable)",
    )
    g.add_argument(
        "--delta-reference",
        action="append",
        default=[],
        metavar="NAME=REF.gguf",
        help="the pre-trained model delta NAME was tuned from (default: --reference)",
    )
    for name in LOAD_SETTINGS:
        add_setting(g, name)
    g.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    add_rpc_args(g)
    add_profile_args(g)


def sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EFT and sampling")
    for name in GENERATION_SETTINGS:
        add_setting(g, name)
    g.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="weight α_NAME of delta NAME (repeatable; default 1, or the profile's)",
    )
    g.add_argument("--draft-with", metavar="NAME", help="which delta's chat model drafts (default: largest |weight|)")


def default_parallel(settings: dict[str, Any]) -> int:
    """Prompts at once when --parallel is not given: 8 when the models run on a GPU (it
    decodes many tokens in about the time of one), 1 on a CPU (batching gained only
    0.98–1.25× at N = 4 on a 2-core CPU, docs/bench.md, for N× the KV memory)."""
    from eft_local.llama.rpc import has_local_gpu

    return 8 if gpu_layers(settings) != 0 and has_local_gpu() else 1


# -- resolving models and settings ----------------------------------------------------------
def resolve_models(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any], str | None]:
    """Role -> path from --profile, --base/--chat/--reference and --delta/--delta-reference;
    plus the profile's checked defaults (with its delta weights under ``weights``)."""
    from eft_local.models.profiles import resolve_profile, role_file  # reads TOML: only when asked

    overrides = {r: getattr(args, r) for r in ROLES if getattr(args, r, None)}
    deltas = _pairs(getattr(args, "delta", []), "--delta", "NAME=CHAT.gguf")
    for name, path in deltas.items():
        overrides[check_delta_name(name, "--delta")] = path
    for name, path in _pairs(getattr(args, "delta_reference", []), "--delta-reference", "NAME=REF.gguf").items():
        if name not in deltas and name != CHAT:
            raise UserError(f"--delta-reference {name}=…: there is no --delta {name}=…")
        overrides[name + REF_SUFFIX if name != CHAT else REFERENCE] = path
    has_delta = CHAT in overrides or deltas
    if not args.profile and {"base", "reference"} <= set(overrides) and has_delta:
        return {r: role_file(r, p, missing_ok=True) for r, p in overrides.items()}, {}, None
    resolved = resolve_profile(
        args.profile,
        models_file=getattr(args, "models_file", None),
        models_dir=getattr(args, "models_dir", None),
        overrides=overrides,
    )
    return dict(resolved.paths), {**resolved.defaults, "weights": resolved.weights}, resolved.name


def _pairs(items: Sequence[str], flag: str, form: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict; one clear line for a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"{flag} {item!r}: expected {form}")
        if name.strip() in out:
            raise UserError(f"{flag} {name.strip()} given twice")
        out[name.strip()] = value.strip()
    return out


def check_flags(args: argparse.Namespace) -> None:
    """Every setting flag given, checked before anything else (a typo fails before a profile is read)."""
    for name, st in SETTINGS.items():
        if getattr(args, name, None) is not None:
            st.check(getattr(args, name), st.cli_flag)


def resolve_settings(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Every setting: the CLI flag, else the profile's default, else the built-in default —
    each checked by its one definition (finite, in range), naming where it came from."""
    out: dict[str, Any] = {}
    for name, st in SETTINGS.items():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = st.check(value, st.cli_flag)
        elif name in defaults:
            out[name] = defaults[name]  # checked when the profile was read
        else:
            out[name] = st.default
    out["weights"] = dict(defaults.get("weights", {}))
    for name, raw in _pairs(getattr(args, "weight", []), "--weight", "NAME=W").items():
        if name == "chat":
            out["alpha"] = check_weight(name, raw, "--weight chat")
        else:
            out["weights"][check_delta_name(name, "--weight")] = check_weight(name, raw, f"--weight {name}")
    out["draft_with"] = getattr(args, "draft_with", None)
    out["variants"] = dict(defaults.get("variants", {}))  # a profile's named variants (serve)
    return out


def check_mix(settings: dict[str, Any], paths: dict[str, Path]) -> None:
    """``--weight`` names and ``--draft-with`` must name deltas of the loaded model set."""
    check_delta_names(settings["weights"], paths, "--weight {}=…")
    if settings["draft_with"] is not None:
        pick_drafter(deltas_of(paths), lambda _: 1.0, settings["draft_with"])


def check_delta_names(names: Iterable[str], paths: dict[str, Path], flag: str) -> None:
    """Every name is a delta besides chat; ``flag`` (a format for the name) says where it came from."""
    check_known_deltas(names, [d.name for d in deltas_of(paths)], flag.format)


def gpu_layers(settings: dict[str, Any]) -> int:
    """``--gpu-layers``, or the engine's default (all layers when a GPU or an RPC server can take them, else 0)."""
    from eft_local.engine.loading import gpu_layers as layers

    return layers(settings["gpu_layers"], settings.get("rpc"))


def load_engine(paths: dict[str, Path], settings: dict[str, Any], n_seq: int = 1):
    """Load every role's model (eft_local.engine.loading) with a progress line per model on stderr."""
    from eft_local.engine.loading import load_engine as load

    options = load_options(settings, n_seq)
    started: dict[str, float] = {}

    def progress(role: str, fraction: float) -> None:
        if role not in started:
            started[role] = time.perf_counter()
            print(f"loading {role:<9} {paths[role]} (gpu layers {options.n_gpu_layers})", file=sys.stderr, flush=True)
        if fraction >= 1.0 and role in started:
            print(f"  {role} ready in {time.perf_counter() - started.pop(role):.1f} s", file=sys.stderr, flush=True)
            started[role] = float("inf")

    return load(paths, options, on_progress=progress)


def load_options(settings: dict[str, Any], n_seq: int = 1):
    """The load-scope settings of a command as the engine layer's LoadOptions."""
    from eft_local.engine.loading import LoadOptions

    return LoadOptions(
        n_ctx=settings["n_ctx"],
        n_gpu_layers=gpu_layers(settings),
        n_threads=settings["threads"],
        rpc=settings.get("rpc") or {},
        n_seq=n_seq,
    )


def prepare(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any], str | None]:
    """Models and checked settings of a command, before anything loads."""
    check_flags(args)
    paths, defaults, profile = resolve_models(args)
    settings = resolve_settings(args, defaults)
    check_mix(settings, paths)
    settings["rpc"] = rpc_placement(args, defaults, paths)
    return paths, settings, profile


def rpc_placement(args: argparse.Namespace, defaults: dict[str, Any], paths: dict[str, Path]) -> dict[str, list[str]]:
    """Role -> RPC servers (``--rpc`` over the profile's ``rpc`` table), for roles that exist."""
    placement = rpc_endpoints(args, defaults)
    unknown = [r for r in placement if r not in paths]
    if unknown:
        raise UserError(f"--rpc {unknown[0]}=…: unknown role '{unknown[0]}' (roles here: {', '.join(paths)})")
    return placement


# -- commands that read rows from a file and write JSONL rows (run, score) ----------------------
def rows_args(p: argparse.ArgumentParser, file_help: str, grid_what: str) -> None:
    """--prompt-file, --output and --grid, as `run` and `score` share them."""
    p.add_argument("--prompt-file", required=True, metavar="FILE", help=file_help)
    p.add_argument("--output", metavar="OUT.jsonl", help="write rows here (default stdout)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help=f"{grid_what} at every combination; KEY: {', '.join(GRID_KEYS)} or weight.NAME (repeatable)",
    )


def grid_points(args: argparse.Namespace, settings: dict[str, Any], paths: dict[str, Path], rows: int) -> list[dict[str, Any]]:
    """``--grid``'s points for a file of ``rows`` input rows, as every command with ``--grid``
    takes them: the one cap on rows (``batch.grid.MAX_ROWS``), then the delta names."""
    from eft_local.batch.grid import grid_deltas, parse_grid

    grid = parse_grid(args.grid, settings, prompts=rows)
    check_delta_names(grid_deltas(grid), paths, "--grid weight.{}")
    return grid


def progress_printer(total: int) -> Callable[[int, int, Any], None]:
    """A progress line on stderr: live on a terminal, every 5 s in a log; nothing for one row."""
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(done: int, _total: int, summary) -> None:
        now = time.perf_counter()
        if total < 2 or (not tty and now - last[0] < 5.0 and done < total):
            return
        last[0] = now
        end = "\n" if not tty or done == total else ""
        print(f"\r[{done}/{total}] {summary.line()}", end=end, file=sys.stderr, flush=True)

    return show
