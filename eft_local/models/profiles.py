"""Model profiles: load models.toml, apply the user's overrides, resolve local paths.

Search order for profiles (unless an explicit ``models_file`` is given, which is then the
only source): the repository's ``models.toml`` when running from a checkout, else the copy
shipped inside the package; then ``$XDG_CONFIG_HOME/eft-local/models.toml``, whose profiles
replace same-named ones and whose ``default`` wins.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from eft_local.errors import UserError
from eft_local.llama.files import NO_FILE, file_problem
from eft_local.llama.rpc import parse_rpc_spec
from eft_local.mix.mixture import REF_SUFFIX, ROLES, check_delta_name
from eft_local.models.demo import resolve as resolve_demo
from eft_local.settings import PROFILE_KEYS, check_mapping, check_variant, check_weight

FALLBACK_DEFAULT = "qwen2.5-7b"

_FILE_KEYS = {"repo_id", "filename", "revision", "sha256", "size"}
_PROFILE_KEYS = {"description", "defaults", "deltas", "rpc", "variants", *ROLES}
_DELTA_KEYS = {"chat", "reference", "weight"}
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_FILE_SIZE = 2**60  # bytes; a bigger `size` (TOML allows 400 digits) is a typo, not a file


@dataclass(frozen=True)
class ModelFile:
    """One GGUF file: on the hub (``repo_id``/``filename``), or a local file the profile
    names with ``path`` (then ``local`` is that path and nothing is downloaded)."""

    repo_id: str
    filename: str
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    local: Path | None = None

    @classmethod
    def at(cls, path: Path) -> ModelFile:
        return cls(repo_id="", filename=path.name, local=path)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def key(self) -> str:
        """Where the file lives relative to the models dir (``repo_id/filename``), or its local path."""
        return str(self.local) if self.local is not None else f"{self.repo_id}/{self.filename}"

    def local_path(self, models_dir: str | Path) -> Path:
        return self.local if self.local is not None else Path(models_dir) / self.repo_id / self.filename


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    files: dict[str, ModelFile]  # role -> file: base, chat, reference, NAME, NAME.reference
    defaults: dict[str, object] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # default weight of each extra delta


@dataclass
class ResolvedProfile:
    name: str
    paths: dict[str, Path]
    defaults: dict[str, object]
    weights: dict[str, float] = field(default_factory=dict)


class ProfileSet(dict):
    """``dict[name, Profile]`` that also remembers the configured default name."""

    default: str | None = None
    sources: tuple[Path, ...] = ()


# ---------------------------------------------------------------- locations


def default_models_dir() -> Path:
    """``$EFT_LOCAL_MODELS_DIR``, else ``$XDG_DATA_HOME/eft-local/models``."""
    explicit = os.environ.get("EFT_LOCAL_MODELS_DIR")
    if explicit:
        return expand_user(explicit, "$EFT_LOCAL_MODELS_DIR")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data).expanduser() / "eft-local" / "models"


def user_models_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(config).expanduser() / "eft-local" / "models.toml"


def builtin_models_file() -> Path:
    """The built-in profiles: ``eft_local/models.toml``, a link to the repo-root file in a
    checkout and that file's copy in an installed package (one file, one source)."""
    return Path(str(resources.files("eft_local").joinpath("models.toml"))).resolve()


def expand_user(raw: str | Path, what: str) -> Path:
    """``~``/``~user`` expanded; an unknown user (``~nosuchuser/x``) is one line naming ``what``."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:
        head = str(raw).split("/", 1)[0]
        raise UserError(f"{what} {raw}: cannot expand {head} (no such user, or no home directory)") from None


# ---------------------------------------------------------------- parsing


MAX_TOML_BYTES = 4 << 20
MAX_TOML_DEPTH = 32  # a profile is 4 tables deep; nothing legitimate comes near this


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)  # bounded: --models-file /dev/zero must not eat the memory
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"models file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"models file is a directory: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read models file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"models file is not UTF-8 text: {path}") from None
    if len(data) > MAX_TOML_BYTES:
        raise UserError(f"models file {path} is larger than {MAX_TOML_BYTES >> 20} MiB; is it the right file?")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except ValueError:  # an integer of more than 4300 digits (Python's int parsing limit)
        raise UserError(f"{path}: a number with too many digits") from None
    except RecursionError:  # tomllib recurses once per nested array/inline table
        raise UserError(f"{path}: line {_deep_line(text)}: nested deeper than {MAX_TOML_DEPTH} levels") from None
    key = _too_deep(data)
    if key is not None:
        raise UserError(f"{path}: '{key}' is nested deeper than {MAX_TOML_DEPTH} levels")
    return data


def _too_deep(data: dict[str, Any]) -> str | None:
    """The dotted key of the first value nested deeper than MAX_TOML_DEPTH, without recursion."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        key, value, depth = stack.pop()
        if depth > MAX_TOML_DEPTH:
            return key.split("[", 1)[0] or "(top level)"
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v, depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v, depth + 1) for i, v in enumerate(value))
    return None


def _deep_line(text: str) -> int:
    """The line where brackets (outside strings and comments) first nest past MAX_TOML_DEPTH."""
    depth, quote = 0, ""
    for lineno, line in enumerate(text.split("\n"), 1):
        for ch in line:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                break
            elif ch in "[{":
                depth += 1
                if depth > MAX_TOML_DEPTH:
                    return lineno
            elif ch in "]}":
                depth -= 1
        quote = ""
    return 1


def _parse_file(where: str, role: str, raw: object, toml_dir: Path) -> ModelFile:
    if not isinstance(raw, dict):
        raise UserError(
            f'{where}: \'{role}\' must be a table like {{ repo_id = "owner/name", filename = "model.gguf" }} '
            'or { path = "/models/model.gguf" }'
        )
    if "path" in raw:
        return _parse_local(where, role, raw, toml_dir)
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise UserError(
            f"{where}: '{role}' has unknown key(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(_FILE_KEYS))}, or path alone)"
        )
    repo, fname = raw.get("repo_id"), raw.get("filename")
    if not isinstance(repo, str) or not _REPO_RE.match(repo):
        raise UserError(f"{where}: '{role}.repo_id' must look like \"owner/name\", got {repo!r}")
    if not isinstance(fname, str) or not fname or fname.startswith("/") or ".." in fname.split("/"):
        raise UserError(f"{where}: '{role}.filename' must be a relative file name, got {fname!r}")
    rev, sha, size = raw.get("revision"), raw.get("sha256"), raw.get("size")
    if rev is not None and (not isinstance(rev, str) or not rev):
        raise UserError(f"{where}: '{role}.revision' must be a non-empty string")
    if sha is not None and (not isinstance(sha, str) or not _SHA_RE.match(sha.lower())):
        raise UserError(f"{where}: '{role}.sha256' must be 64 hex digits")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= _MAX_FILE_SIZE):
        raise UserError(f"{where}: '{role}.size' must be a positive integer of bytes, at most 2**60")
    return ModelFile(repo, fname, rev, sha.lower() if sha else None, size)


def _parse_local(where: str, role: str, raw: dict, toml_dir: Path) -> ModelFile:
    """``{ path = "..." }``: a GGUF of the user's own, absolute or relative to the models.toml."""
    if set(raw) != {"path"}:
        extra = ", ".join(sorted(set(raw) - {"path"}))
        raise UserError(f"{where}: '{role}' names a local path, so it takes no {extra} (those are for hub files)")
    value = raw["path"]
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise UserError(f"{where}: '{role}.path' must be a file path (absolute, or relative to {toml_dir}), got {value!r}")
    demo = resolve_demo(value)  # "<miniature>/NAME": the demo family (your build, else the shipped one)
    if demo is not None:
        return ModelFile.at(demo)
    path = expand_user(value, f"{where}: '{role}.path'")
    return ModelFile.at(path if path.is_absolute() else toml_dir / path)


def _parse_defaults(where: str, raw: object) -> dict[str, object]:
    """Every key must be a setting (``settings.SETTINGS``) and is checked like its CLI flag."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: 'defaults' must be a table")
    return check_mapping(raw, PROFILE_KEYS, f"{where}:", fmt=lambda k: f" defaults.{k}")


def _parse_deltas(where: str, raw: object, toml_dir: Path) -> tuple[dict[str, ModelFile], dict[str, float]]:
    """``[profiles.X.deltas.NAME]`` tables: chat file, optional reference file, default weight."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: 'deltas' must be a table of [deltas.NAME] sections")
    files: dict[str, ModelFile] = {}
    weights: dict[str, float] = {}
    for name, table in raw.items():
        at = f"{where}: delta '{name}'"
        check_delta_name(name, at)
        if name in ROLES or not isinstance(table, dict) or "chat" not in table:
            raise UserError(
                f"{at} must be a table with a 'chat' file (and optional 'reference', 'weight'), "
                "and not be named base/chat/reference"
            )
        unknown = set(table) - _DELTA_KEYS
        if unknown:
            raise UserError(f"{at} has unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_DELTA_KEYS))})")
        files[name] = _parse_file(at, "chat", table["chat"], toml_dir)
        if "reference" in table:
            files[name + REF_SUFFIX] = _parse_file(at, "reference", table["reference"], toml_dir)
        weights[name] = check_weight(name, table.get("weight", 1.0), f"{at}: weight")
    return files, weights


def _parse_profile(path: Path, name: str, raw: object) -> Profile:
    where = f"{path}: profile '{name}'"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a table")
    missing = [r for r in ROLES if r not in raw]
    if missing:
        hint = ""
        if any(isinstance(v, dict) and any(r in v for r in ROLES) for v in raw.values()):
            hint = " (a name containing '.' must be quoted: [profiles.\"name.with.dots\"])"
        raise UserError(f"{where} is missing role(s) {', '.join(missing)}; every profile needs {', '.join(ROLES)}{hint}")
    unknown = set(raw) - _PROFILE_KEYS
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_PROFILE_KEYS))})")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where}: 'description' must be a string")
    toml_dir = path.parent.absolute()
    files = {role: _parse_file(where, role, raw[role], toml_dir) for role in ROLES}
    delta_files, weights = _parse_deltas(where, raw.get("deltas"), toml_dir)
    defaults = _parse_defaults(where, raw.get("defaults"))
    if "rpc" in raw:  # rpc = { base = "10.0.0.5:50052" } (or a list): carried to the loader with the defaults
        defaults["rpc"] = _parse_rpc(where, raw["rpc"])
        unknown = [r for r in defaults["rpc"] if r not in files and r not in delta_files]
        if unknown:
            raise UserError(f"{where}: rpc: unknown role '{unknown[0]}' (roles: {', '.join([*files, *delta_files])})")
    if "variants" in raw:  # variants = { "beta-1.5" = { beta = 1.5 } }: served as models of their own
        if not isinstance(raw["variants"], dict):
            raise UserError(f"{where}: 'variants' must be a table of name = {{ settings }}")
        defaults["variants"] = {n: check_variant(n, v, f"{where}: variants.{n}") for n, v in raw["variants"].items()}
    return Profile(name, description, {**files, **delta_files}, defaults, weights)


def _parse_rpc(where: str, raw: object) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: 'rpc' must be a table like {{ base = \"10.0.0.5:50052\" }}")
    result = {}
    for role, servers in raw.items():
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, list) or not all(isinstance(e, str) for e in servers):
            raise UserError(f'{where}: rpc.{role} must be "HOST:PORT" or a list of them')
        try:
            result[role] = parse_rpc_spec(f"{role}={','.join(servers)}")[1]
        except UserError as e:
            raise UserError(f"{where}: rpc: {str(e).removeprefix('--rpc ')}") from None
    return result


def parse_models_file(path: str | Path) -> tuple[dict[str, Profile], str | None]:
    """Parse one models.toml into (profiles, default name or None)."""
    path = expand_user(path, "models file")
    data = _read_toml(path)
    unknown = set(data) - {"default", "profiles"}
    if unknown:
        raise UserError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} (expected 'default' and [profiles.NAME] tables)"
        )
    raw_profiles = data.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise UserError(f"{path}: 'profiles' must be a table of [profiles.NAME] sections")
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise UserError(f"{path}: 'default' must be a profile name (string)")
    return {n: _parse_profile(path, n, p) for n, p in raw_profiles.items()}, default


# ---------------------------------------------------------------- public API


def load_profiles(models_file: str | Path | None = None) -> ProfileSet:
    """Load profiles; ``models_file`` given means only that file is read."""
    result = ProfileSet()
    sources = [expand_user(models_file, "--models-file")] if models_file else [builtin_models_file()]
    if not models_file and user_models_file().is_file():
        sources.append(user_models_file())
    for src in sources:
        profiles, default = parse_models_file(src)
        result.update(profiles)
        result.default = default or result.default
    result.sources = tuple(sources)
    if result.default is not None and result.default not in result:
        raise UserError(f"default profile '{result.default}' is not defined (known: {', '.join(result) or 'none'})")
    return result


def default_profile_name(profiles: dict[str, Profile]) -> str:
    if not profiles:
        raise UserError(f"no model profiles are defined; add one to {user_models_file()} or pass --models-file")
    default = getattr(profiles, "default", None)
    if default in profiles:
        return default
    return FALLBACK_DEFAULT if FALLBACK_DEFAULT in profiles else next(iter(profiles))


def get_profile(profiles: dict[str, Profile], name: str | None) -> Profile:
    name = name or default_profile_name(profiles)
    if name not in profiles:
        raise UserError(f"unknown profile '{name}'; known profiles: {', '.join(profiles)}")
    return profiles[name]


def download_command(name: str, models_file: str | Path | None = None, models_dir: str | Path | None = None) -> str:
    """The exact command that fetches a profile's files with the same options."""
    cmd = f"eft-local download {name}"
    if models_file:
        cmd += f" --models-file {models_file}"
    if models_dir:
        cmd += f" --models-dir {models_dir}"
    return cmd


def _role_flag(role: str) -> str:
    """The flag that gives ``role`` a file of one's own."""
    if role in ROLES:
        return f"--{role}"
    return f"--delta-reference {role.removesuffix(REF_SUFFIX)}" if role.endswith(REF_SUFFIX) else f"--delta {role}"


def role_file(role: str, raw: str | Path, missing_ok: bool = False) -> Path:
    """A file given for ``role`` by a flag, checked (one line naming the flag when it can't be a
    model); ``missing_ok``: a missing one is left to the loader's check (``model file not found``)."""
    flag = _role_flag(role)
    path = expand_user(raw, flag)
    problem = file_problem(path)
    if problem and not (missing_ok and problem == NO_FILE):
        raise UserError(f"{flag} {raw}: {problem}")
    return path


def resolve_profile(
    name: str | None,
    models_file: str | Path | None = None,
    models_dir: str | Path | None = None,
    overrides: dict[str, str] | None = None,
) -> ResolvedProfile:
    """Local paths for a profile; ``overrides`` (role -> path) win over the profile and may
    add deltas (roles ``NAME`` / ``NAME.reference``)."""
    profile = get_profile(load_profiles(models_file), name)
    root = expand_user(models_dir, "--models-dir") if models_dir else default_models_dir()
    paths = {r: role_file(r, p) for r, p in (overrides or {}).items() if p}
    missing, missing_local = [], []
    for role, mf in profile.files.items():
        if role not in paths:
            paths[role] = mf.local_path(root)
            problem = file_problem(paths[role])
            if problem and problem != NO_FILE:
                where = f"profile '{profile.name}': {role} {paths[role]}"
                raise UserError(f"{where}: {problem}; fix it in models.toml or pass {_role_flag(role)}")
            if problem:
                (missing_local if mf.is_local else missing).append(f"{role} ({mf.key})")
    if missing_local:
        raise UserError(
            f"profile '{profile.name}': no such file for {', '.join(missing_local)}; "
            "fix its path in models.toml or pass --base/--chat/--reference"
        )
    if missing:
        raise UserError(
            f"profile '{profile.name}': missing {', '.join(missing)} in {root}; "
            f"download with `{download_command(profile.name, models_file, models_dir)}`"
            " or pass --base/--chat/--reference"
        )
    return ResolvedProfile(profile.name, paths, dict(profile.defaults), dict(profile.weights))
