"""The ``download`` and ``models`` subcommands (wired into eft_local.cli.main_tmp by ``register``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eft_local.errors import UserError
from eft_local.llama.files import NO_FILE, file_problem
from eft_local.models.profiles import (
    Profile,
    default_models_dir,
    default_profile_name,
    download_command,
    expand_user,
    get_profile,
    load_profiles,
)

MODELS_DIR_HELP = (
    "where GGUF files live, as <DIR>/<repo_id>/<filename> (default: $EFT_LOCAL_MODELS_DIR, else $XDG_DATA_HOME/eft-local/models)"
)


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    """The options every profile-aware subcommand shares."""
    parser.add_argument(
        "--models-file",
        metavar="PATH",
        default=None,
        help="read profiles from this TOML file only (default: the built-in "
        "models.toml plus $XDG_CONFIG_HOME/eft-local/models.toml)",
    )
    parser.add_argument("--models-dir", metavar="DIR", default=None, help=MODELS_DIR_HELP)


def models_dir_of(args: argparse.Namespace) -> Path:
    raw = getattr(args, "models_dir", None)
    return expand_user(raw, "--models-dir") if raw else default_models_dir()


def add_download_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "profile", nargs="?", default=None, help="profile to download (default: the default profile; see `eft-local models`)"
    )
    parser.add_argument("--all", action="store_true", help="download every profile")
    add_profile_args(parser)


def register(subparsers) -> None:
    """Add ``download`` and ``models`` to an argparse subparsers object."""
    dl = subparsers.add_parser(
        "download",
        help="download a profile's three GGUF files from the Hugging Face hub",
        description="Download (and sha256-verify) the base/chat/reference files of a profile. "
        "Interrupted downloads resume; verified files are skipped. Uses HF_TOKEN or "
        "`hf auth login` for gated repos and HF_ENDPOINT for mirrors.",
    )
    add_download_args(dl)
    dl.set_defaults(func=cmd_download)
    ls = subparsers.add_parser(
        "models",
        help="list profiles and which of their files are present",
        description="List model profiles, the files each needs, their sizes and whether they "
        "are present (verified), unverified, or missing.",
    )
    ls.add_argument("profile", nargs="?", default=None, help="show only this profile")
    add_profile_args(ls)
    ls.set_defaults(func=cmd_models)


def _selected(args: argparse.Namespace) -> list[Profile]:
    profiles = load_profiles(args.models_file)
    if getattr(args, "all", False):
        if args.profile:
            raise UserError("give either a profile name or --all, not both")
        if not profiles:
            raise UserError("no model profiles are defined")
        return list(profiles.values())
    return [get_profile(profiles, args.profile)]


def cmd_download(args: argparse.Namespace) -> int:
    from eft_local.models.download import run_download  # imports huggingface_hub: only when needed

    selected = _selected(args)
    try:
        return run_download(selected, models_dir_of(args))
    except KeyboardInterrupt:  # main says it on its one line
        raise KeyboardInterrupt("run the same command again to resume") from None


def cmd_models(args: argparse.Namespace) -> int:
    from eft_local.models.download import human_size, load_records

    profiles = load_profiles(args.models_file)
    names = [get_profile(profiles, args.profile).name] if args.profile else list(profiles)
    default = default_profile_name(profiles) if profiles else None
    root = models_dir_of(args)
    records = load_records(root)
    print(f"models dir: {root}")
    print(f"profiles from: {', '.join(str(s) for s in profiles.sources)}")
    for name in names:
        profile = profiles[name]
        rows = [(role, *_status(root, mf, records), mf) for role, mf in profile.files.items()]
        mark = " (default)" if name == default else ""
        print(f"\n{name}{mark}: {profile.description}")
        print(f"  {'role':<18} {'status':<10} {'size':>9}  repo_id/filename (or local path)")
        rpc = profile.defaults.get("rpc") or {}
        for role, status, size, mf in rows:
            shown = human_size(size if size is not None else mf.size) if (size or mf.size) else "-"
            runs = f"  (runs on RPC {', '.join(rpc[role])} + local)" if role in rpc else ""
            print(f"  {role:<18} {status:<10} {shown:>9}  {mf.key}{runs}")
        _print_hint(name, rows, args)
    return 0


def _status(root: Path, mf, records: dict) -> tuple[str, int | None]:
    """``file_status``, or "unusable" for a path that is there but can't be a model (a name too
    long, a device, a /proc file): a listing names it instead of failing."""
    from eft_local.models.download import file_status

    problem = file_problem(mf.local_path(root))
    return ("unusable", None) if problem and problem != NO_FILE else file_status(root, mf, records)


def _print_hint(name: str, rows: list, args: argparse.Namespace) -> None:
    cmd = download_command(name, args.models_file, args.models_dir)
    for role, status, _, mf in rows:
        if status == "unusable":
            print(f"  -> {role}: {mf.key}: {file_problem(mf.local_path(models_dir_of(args)))}")
    if any(status == "missing" for _, status, *_ in rows):
        print(f"  -> missing files: run `{cmd}`")
    elif any(status == "unverified" for _, status, *_ in rows):
        print(f"  -> unverified files (placed by hand or changed): `{cmd}` checks them")


def download_main(argv: list[str] | None = None, prog: str = "download_models.py") -> int:
    """Stand-alone ``download`` for scripts/download_models.py."""
    parser = argparse.ArgumentParser(prog=prog, description="Download an eft-local model profile.")
    add_download_args(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_download(args)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
