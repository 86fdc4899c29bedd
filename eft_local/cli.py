"""Command line: ``eft-local [chat|run|download|models]``. Errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .settings import GRID_KEYS, SETTINGS, check_delta_name, check_weight

LOAD_SETTINGS = ("n_ctx", "gpu_layers", "threads")
GENERATION_SETTINGS = (
    "alpha",
    "beta",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "top_p_mode",
    "seed",
    "max_tokens",
    "draft_tokens",
    "stop",
    "prompt_style",
    "system_prompt",
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_setting(g, name: str, **extra) -> None:
    """A CLI flag derived from the setting's one definition (checked later, with the profile)."""
    st = SETTINGS[name]
    default = "" if st.default in (None, ()) else f" (default {st.default})"
    if st.type is list:
        g.add_argument(st.cli_flag, dest=name, action="append", metavar=st.metavar, help=st.help, **extra)
    else:
        choices = {"choices": st.choices} if st.choices else {}
        g.add_argument(st.cli_flag, dest=name, metavar=st.metavar, help=st.help + default, **choices, **extra)


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--profile", help="named model set from models.toml (see `eft-local models`)")
    for role, what in (
        ("base", "large pre-trained model"),
        ("chat", "small fine-tuned model"),
        ("reference", "small base the chat model was tuned from"),
    ):
        g.add_argument(f"--{role}", metavar="GGUF", help=f"{what} (overrides the profile)")
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
        _add_setting(g, name)
    g.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    from .cli_rpc import add_rpc_args

    add_rpc_args(g)
    try:
        from .cli_models import add_profile_args
    except ImportError:  # pragma: no cover - profiles module absent
        return
    add_profile_args(g)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EFT and sampling")
    for name in GENERATION_SETTINGS:
        _add_setting(g, name)
    g.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="weight α_NAME of delta NAME (repeatable; default 1, or the profile's)",
    )
    g.add_argument("--draft-with", metavar="NAME", help="which delta's chat model drafts (default: largest |weight|)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be in [1, 256], got {value}")
    return value


def default_parallel(settings: dict[str, Any]) -> int:
    """Prompts at once when --parallel is not given: 8 when the models run on a GPU (it
    decodes many tokens in about the time of one), 1 on a CPU (batching gained only
    0.98–1.25× at N = 4 on a 2-core CPU, docs/bench.md, for N× the KV memory)."""
    from .rpc import has_local_gpu

    return 8 if gpu_layers(settings) != 0 and has_local_gpu() else 1


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="eft-local", description="Emulated fine-tuning on llama.cpp: a large base model steered by a small chat model."
    )
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    run = sub.add_parser("run", help="batch mode: prompts from a file, JSONL out")
    run.add_argument(
        "--prompt-file",
        required=True,
        metavar="FILE",
        help=".txt (one prompt per line) or .jsonl ({id?, prompt} or {id?, messages})",
    )
    run.add_argument("--output", metavar="OUT.jsonl", help="write rows here (default stdout)")
    run.add_argument("--raw", action="store_true", help="no chat template: prompt text as-is, BOS per model")
    run.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help=f"run every prompt at every combination; KEY: {', '.join(GRID_KEYS)} or weight.NAME (repeatable)",
    )
    run.add_argument(
        "--parallel",
        type=_positive_int,
        metavar="N",
        help="generate for N prompts at once, batched (1 = one after another; default 1 on a CPU, 8 on a GPU)",
    )
    _model_args(run)
    _sampling_args(run)
    run.set_defaults(func=cmd_run)
    chat = sub.add_parser("chat", help="the chat app (default)")
    _model_args(chat)
    _sampling_args(chat)
    chat.set_defaults(func=cmd_chat)
    try:
        from .cli_models import register
    except ImportError:  # pragma: no cover
        pass
    else:
        register(sub)
    from .cli_rpc import register as register_rpc

    register_rpc(sub)
    from .server.cli import register as register_serve

    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["chat", *argv]
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"eft-local: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eft-local: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a llama.cpp failure: still one line, details on --verbose
        if getattr(args, "verbose", False):
            raise
        print(f"eft-local: error: unexpected {type(e).__name__}: {e} (run with --verbose for details)", file=sys.stderr)
        return 1


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("eft_local.llama")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR)


# -- resolving models and settings ----------------------------------------------------------
def resolve_models(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any], str | None]:
    """Role -> path from --profile, --base/--chat/--reference and --delta/--delta-reference;
    plus the profile's checked defaults (with its delta weights under ``weights``)."""
    from .mixture import REF_SUFFIX
    from .profiles import ROLES, resolve_profile

    overrides = {r: getattr(args, r) for r in ROLES if getattr(args, r, None)}
    deltas = _pairs(getattr(args, "delta", []), "--delta", "NAME=CHAT.gguf")
    for name, path in deltas.items():
        overrides[check_delta_name(name, "--delta")] = path
    for name, path in _pairs(getattr(args, "delta_reference", []), "--delta-reference", "NAME=REF.gguf").items():
        if name not in deltas and name != "chat":
            raise UserError(f"--delta-reference {name}=…: there is no --delta {name}=…")
        overrides[name + REF_SUFFIX if name != "chat" else "reference"] = path
    has_delta = "chat" in overrides or deltas
    if not args.profile and {"base", "reference"} <= set(overrides) and has_delta:
        return {r: Path(p) for r, p in overrides.items()}, {}, None
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
    return out


def check_mix(settings: dict[str, Any], paths: dict[str, Path]) -> None:
    """``--weight`` names and ``--draft-with`` must name deltas of the loaded model set."""
    from .mixture import deltas_of

    check_delta_names(settings["weights"], paths, "--weight {}=…")
    known = [d.name for d in deltas_of(paths)]
    if settings["draft_with"] is not None and settings["draft_with"] not in known:
        raise UserError(f"--draft-with {settings['draft_with']}: there is no delta named so (deltas: {', '.join(known)})")


def check_delta_names(names: Iterable[str], paths: dict[str, Path], flag: str) -> None:
    """Every name is a delta besides chat; ``flag`` (a format for the name) says where it came from."""
    from .mixture import deltas_of

    known = [d.name for d in deltas_of(paths) if d.name != "chat"]
    for name in names:
        if name not in known:
            raise UserError(
                f"{flag.format(name)}: there is no delta named {name} (deltas besides chat: {', '.join(known) or 'none'})"
            )


def gpu_layers(settings: dict[str, Any]) -> int:
    """``--gpu-layers``; by default all layers when a GPU (or an RPC server) can take them, else 0."""
    value = settings["gpu_layers"]
    if value is None:
        from .rpc import has_local_gpu

        value = -1 if settings.get("rpc") or has_local_gpu() else 0
    return int(value)


def load_engine(paths: dict[str, Path], settings: dict[str, Any], n_seq: int = 1):
    """Load every role's model with a progress line per model on stderr."""
    from .decoder import EftEngine
    from .llama_adapter import check_gguf

    for path in paths.values():  # every file, before minutes go into loading the first
        check_gguf(Path(path).expanduser())
    gpu = gpu_layers(settings)
    started: dict[str, float] = {}

    def progress(role: str, fraction: float) -> None:
        if role not in started:
            started[role] = time.perf_counter()
            print(f"loading {role:<9} {paths[role]} (gpu layers {gpu})", file=sys.stderr, flush=True)
        if fraction >= 1.0 and role in started:
            print(f"  {role} ready in {time.perf_counter() - started.pop(role):.1f} s", file=sys.stderr, flush=True)
            started[role] = float("inf")

    return EftEngine.load(
        paths,
        n_ctx=settings["n_ctx"],
        n_gpu_layers=gpu,
        n_threads=settings["threads"],
        on_progress=progress,
        rpc=settings["rpc"],
        n_seq=n_seq,
    )


def prepare(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any], str | None]:
    """Models and checked settings of a command, before anything loads."""
    paths, defaults, profile = resolve_models(args)
    settings = resolve_settings(args, defaults)
    check_mix(settings, paths)
    settings["rpc"] = rpc_placement(args, defaults, paths)
    return paths, settings, profile


def rpc_placement(args: argparse.Namespace, defaults: dict[str, Any], paths: dict[str, Path]) -> dict[str, list[str]]:
    """Role -> RPC servers (``--rpc`` over the profile's ``rpc`` table), for roles that exist."""
    from .cli_rpc import rpc_endpoints

    placement = rpc_endpoints(args, defaults)
    unknown = [r for r in placement if r not in paths]
    if unknown:
        raise UserError(f"--rpc {unknown[0]}=…: unknown role '{unknown[0]}' (roles here: {', '.join(paths)})")
    return placement


# -- commands ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .batch import BatchOptions, run_batch
    from .grid import grid_deltas, parse_grid
    from .output import check_output
    from .prompt_file import read_prompt_file

    items = read_prompt_file(args.prompt_file)
    check_output(args.output, args.prompt_file)  # a bad --output fails now, not after the run
    paths, settings, _ = prepare(args)
    grid = parse_grid(args.grid, settings)
    check_delta_names(grid_deltas(grid), paths, "--grid weight.{}")
    total = len(items) * len(grid)
    parallel = min(args.parallel or default_parallel(settings), max(total, 1))
    engine = load_engine(paths, settings, n_seq=parallel)
    if not args.raw and not engine.chat.chat_template:
        engine.close()
        raise UserError(f"{paths['chat']} has no chat template; pass --raw to send the prompts as plain text")
    opts = BatchOptions(settings=settings, raw=args.raw, grid=grid)
    try:
        summary = run_batch(engine, items, opts, args.output, progress=_progress_printer(total), parallel=parallel)
    finally:
        engine.close()
    print(f"eft-local: {summary.line()}", file=sys.stderr)
    from .rpc import EXIT_RPC_LOST, report_lost

    if report_lost():
        return EXIT_RPC_LOST
    return 1 if summary.errors == summary.prompts else 0  # every row failed (rows still written)


def _progress_printer(total: int):
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


def cmd_chat(args: argparse.Namespace) -> int:
    from .batch import generation_config
    from .tui import run_chat

    load_error = None
    paths: dict[str, Path] | None = None
    defaults: dict[str, Any] = {}
    profile_name = None
    try:
        paths, defaults, profile_name = resolve_models(args)
    except UserError as e:
        load_error = str(e)
    settings = resolve_settings(args, defaults)
    settings["rpc"] = {}
    if paths is not None:
        check_mix(settings, paths)
        settings["rpc"] = rpc_placement(args, defaults, paths)
    return run_chat(
        paths=paths,
        load_error=load_error,
        n_ctx=settings["n_ctx"],
        n_gpu_layers=gpu_layers(settings),
        n_threads=settings["threads"],
        sampling=generation_config(settings).sampling,
        draft_tokens=settings["draft_tokens"],
        max_tokens=settings["max_tokens"],
        prompt_style=settings["prompt_style"],
        seed=settings["seed"],
        system_prompt=settings["system_prompt"],
        profile_name=profile_name,
        stop=tuple(settings["stop"]),
        rpc=settings["rpc"],
    )
