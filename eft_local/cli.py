"""Command line: ``eft-local [chat|run|download|models]``. Errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

BUILTIN_DEFAULTS: dict[str, Any] = {
    "alpha": 1.0,
    "beta": 1.0,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 0,
    "min_p": 0.0,
    "top_p_mode": "eft",
    "n_ctx": 4096,
    "gpu_layers": None,  # None: all layers when llama.cpp has GPU offload, else 0
    "max_tokens": 256,
    "prompt_style": "template",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--profile", help="named model triple from models.toml (see `eft-local models`)")
    for role, what in (("base", "large pre-trained model"), ("chat", "small fine-tuned model"), ("reference", "small base the chat model was tuned from")):
        g.add_argument(f"--{role}", metavar="GGUF", help=f"{what} (overrides the profile)")
    g.add_argument("--n-ctx", type=int, help="context length per model (default 4096)")
    g.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU per model (-1 = all)")
    g.add_argument("--threads", type=int, help="CPU threads per model (default: half the logical CPUs)")
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
    g.add_argument("--alpha", type=float, help="behaviour: scale of the fine-tuning delta (chat − reference); default 1")
    g.add_argument("--beta", type=float, help="scale: scale of the pre-training delta (base − reference); default 1")
    g.add_argument("--temperature", type=float, help="0 = greedy (default 0.7)")
    g.add_argument("--top-p", type=float, help="nucleus sampling (default 0.95)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--min-p", type=float, help="drop tokens below min-p × the top token's probability")
    g.add_argument("--top-p-mode", choices=("eft", "base"), help="top-p on the EFT distribution (default) or on the base model alone (DExperts)")
    g.add_argument("--seed", type=int, help="RNG seed: prompt i uses (seed, i), so reruns are identical")
    g.add_argument("--max-tokens", type=int, help="tokens to generate per prompt (default 256)")
    g.add_argument("--draft-tokens", type=int, metavar="K", help="speculative block: 0 = naive EFT; default adaptive")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--prompt-style", choices=("template", "transcript"), help="what base/reference see: the chat template (default) or a plain transcript")
    g.add_argument("--system", metavar="TEXT", help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eft-local", description="Emulated fine-tuning on llama.cpp: a large base model steered by a small chat model.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    run = sub.add_parser("run", help="batch mode: prompts from a file, JSONL out")
    run.add_argument("--prompt-file", required=True, metavar="FILE", help=".txt (one prompt per line) or .jsonl ({id?, prompt} or {id?, messages})")
    run.add_argument("--output", metavar="OUT.jsonl", help="write rows here (default stdout)")
    run.add_argument("--raw", action="store_true", help="no chat template: prompt text as-is, BOS per model")
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
    """Role -> path from --profile and/or --base/--chat/--reference; plus profile defaults."""
    from .profiles import ROLES, resolve_profile

    overrides = {r: getattr(args, r) for r in ROLES if getattr(args, r, None)}
    if len(overrides) == len(ROLES) and not args.profile:
        return {r: Path(p) for r, p in overrides.items()}, {}, None

    resolved = resolve_profile(
        args.profile,
        models_file=getattr(args, "models_file", None),
        models_dir=getattr(args, "models_dir", None),
        overrides=overrides,
    )
    return dict(resolved.paths), dict(resolved.defaults), resolved.name


def gpu_layers(args: argparse.Namespace, defaults: dict[str, Any]) -> int:
    value = setting(args, defaults, "gpu_layers")
    if value is None:
        import llama_cpp

        value = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    return int(value)


def setting(args: argparse.Namespace, defaults: dict[str, Any], name: str) -> Any:
    value = getattr(args, name, None)
    if value is None:
        value = defaults.get(name, BUILTIN_DEFAULTS.get(name))
    return value


def generation_config(args: argparse.Namespace, defaults: dict[str, Any]):
    from .decoder import GenerationConfig
    from .sampling import SamplingParams

    sampling = SamplingParams(**{k: setting(args, defaults, k) for k in ("alpha", "beta", "temperature", "top_k", "top_p", "min_p", "top_p_mode")})
    sampling.validate()
    max_tokens = setting(args, defaults, "max_tokens")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    if args.draft_tokens is not None and not 0 <= args.draft_tokens <= 64:
        raise UserError(f"--draft-tokens must be between 0 and 64, got {args.draft_tokens}")
    return GenerationConfig(sampling=sampling, max_tokens=max_tokens, draft_tokens=args.draft_tokens, stop=tuple(args.stop))


def load_engine(paths: dict[str, Path], args: argparse.Namespace, defaults: dict[str, Any]):
    """Load the three models with a progress line per role on stderr."""
    from .decoder import EftEngine
    from .llama_adapter import check_gguf

    for role, path in paths.items():  # all three files, before minutes go into loading the first
        check_gguf(Path(path).expanduser())
    n_ctx = setting(args, defaults, "n_ctx")
    gpu = gpu_layers(args, defaults)
    if n_ctx < 16:
        raise UserError(f"--n-ctx must be at least 16, got {n_ctx}")
    started: dict[str, float] = {}

    def progress(role: str, fraction: float) -> None:
        if role not in started:
            started[role] = time.perf_counter()
            print(f"loading {role:<9} {paths[role]} (gpu layers {gpu})", file=sys.stderr, flush=True)
        if fraction >= 1.0 and role in started:
            print(f"  {role} ready in {time.perf_counter() - started.pop(role):.1f} s", file=sys.stderr, flush=True)
            started[role] = float("inf")

    from .cli_rpc import rpc_endpoints
    return EftEngine.load(paths, n_ctx=n_ctx, n_gpu_layers=gpu, n_threads=args.threads, on_progress=progress, rpc=rpc_endpoints(args, defaults))


# -- commands ---------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .batch import BatchOptions, run_batch
    from .prompt_file import read_prompt_file

    items = read_prompt_file(args.prompt_file)
    paths, defaults, _ = resolve_models(args)
    config = generation_config(args, defaults)
    style = setting(args, defaults, "prompt_style")
    engine = load_engine(paths, args, defaults)
    if not args.raw and not engine.chat.chat_template:
        engine.close()
        raise UserError(f"{paths['chat']} has no chat template; pass --raw to send the prompts as plain text")
    system = args.system if args.system is not None else defaults.get("system_prompt")
    opts = BatchOptions(config=config, seed=args.seed, raw=args.raw, prompt_style=style, system=system)
    try:
        summary = run_batch(engine, items, opts, args.output, progress=_progress_printer(len(items)))
    finally:
        engine.close()
    print(f"eft-local: {summary.line()}", file=sys.stderr)
    from .rpc import EXIT_RPC_LOST, report_lost
    return EXIT_RPC_LOST if report_lost() else 0


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
    from .tui import run_chat

    load_error = None
    paths: dict[str, Path] | None = None
    defaults: dict[str, Any] = {}
    profile_name = None
    try:
        paths, defaults, profile_name = resolve_models(args)
    except UserError as e:
        load_error = str(e)
    config = generation_config(args, defaults)
    from . import cli_rpc, rpc
    rpc.default_endpoints = cli_rpc.rpc_endpoints(args, defaults)
    return run_chat(
        paths=paths,
        load_error=load_error,
        n_ctx=setting(args, defaults, "n_ctx"),
        n_gpu_layers=gpu_layers(args, defaults),
        n_threads=args.threads,
        sampling=config.sampling,
        draft_tokens=args.draft_tokens,
        max_tokens=config.max_tokens if args.max_tokens is not None else defaults.get("max_tokens", 512),
        prompt_style=setting(args, defaults, "prompt_style"),
        seed=args.seed,
        system_prompt=args.system if args.system is not None else defaults.get("system_prompt"),
        profile_name=profile_name,
    )
