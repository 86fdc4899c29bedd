"""Download profile files from the Hugging Face hub, verified by sha256.

Per file: skip it if the ``.verified.json`` record still matches its size and mtime.
Otherwise ask the hub (HEAD on ``/resolve/``) for size, etag and location, take the
sha256 from models.toml or else from the hub's LFS metadata (``paths-info``, falling back
to an LFS etag), stream into ``<models-dir>/.partial/`` (resuming an earlier partial with
a Range request), hash it, and only then ``os.replace`` it into ``<repo_id>/<filename>``.
A failed check deletes only our own partial, never a file the user had.

We call huggingface_hub's own HEAD/GET helpers rather than ``hf_hub_download`` because
the latter deletes its temporary file when interrupted, so a cut multi-GB download
could never resume across runs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers
from huggingface_hub.utils import tqdm as hf_tqdm

from eft_local.errors import UserError
from eft_local.llama.files import file_problem
from eft_local.models.profiles import ModelFile, Profile

PARTIAL_DIR = ".partial"
RECORD_FILE = ".verified.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
_HUB_HOSTS = {"huggingface.co", "hf.co"}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 8 * 1024 * 1024


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            module = __import__(mod)
            errors += [getattr(module, n) for n in names if hasattr(module, n)]
        except ImportError:
            pass
    return tuple(errors)


NETWORK_ERRORS = _network_errors()


class DownloadError(Exception):
    """A per-file failure; the message is the single line shown to the user."""


@dataclass
class Outcome:
    mf: ModelFile
    path: Path
    status: str  # "downloaded" | "present" | "failed"
    detail: str = ""


@dataclass
class Remote:
    url: str
    size: int | None
    etag: str | None
    sha256: str | None
    headers: dict[str, str]


def hub_endpoint() -> str:
    """Read at call time: huggingface_hub freezes HF_ENDPOINT when it is imported."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def _say(msg: str, out: IO[str] | None = None) -> None:
    print(msg, file=out or sys.stderr, flush=True)


def _one_line(text: object, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------- verified records


def _records_path(models_dir: Path) -> Path:
    return models_dir / RECORD_FILE


def load_records(models_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads(_records_path(models_dir).read_text(encoding="utf-8"))
        return data.get("files", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(models_dir: Path, mf: ModelFile, sha256: str | None) -> None:
    st = mf.local_path(models_dir).stat()
    records = load_records(models_dir)
    records[mf.key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    tmp = _records_path(models_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": records}, indent=1), encoding="utf-8")
    os.replace(tmp, _records_path(models_dir))


def is_verified(models_dir: Path, mf: ModelFile, records: dict | None = None) -> bool:
    """True when the file is unchanged since we last verified it (size + mtime)."""
    rec = (load_records(models_dir) if records is None else records).get(mf.key)
    try:
        st = mf.local_path(models_dir).stat()
    except OSError:
        return False
    return (
        bool(rec)
        and rec.get("size") == st.st_size
        and rec.get("mtime_ns") == st.st_mtime_ns
        and (mf.sha256 is None or rec.get("sha256") == mf.sha256)
        and (mf.size is None or mf.size == st.st_size)
    )


def file_status(models_dir: Path, mf: ModelFile, records: dict | None = None) -> tuple[str, int | None]:
    """("present" | "unverified" | "local" | "missing", size on disk); "local": the profile's
    own ``path``, which is never downloaded or verified."""
    path = mf.local_path(models_dir)
    if not path.is_file():
        return "missing", None
    if mf.is_local:
        return "local", path.stat().st_size
    status = "present" if is_verified(models_dir, mf, records) else "unverified"
    return status, path.stat().st_size


# ---------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    with (
        open(path, "rb") as f,
        hf_tqdm(total=total, unit="B", unit_scale=True, desc=f"sha256 {path.name[-30:]}", disable=None) as bar,
    ):
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------- talking to the hub


def _lfs_sha256(mf: ModelFile, endpoint: str) -> str | None:
    """sha256 from the hub's LFS metadata; None if the hub does not say."""
    try:
        infos = HfApi(endpoint=endpoint).get_paths_info(mf.repo_id, [mf.filename], revision=mf.revision)
    except Exception:  # metadata is optional: fall back to the etag
        return None
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if getattr(info, "path", None) == mf.filename and lfs is not None:
            sha = str(lfs.sha256).lower()
            return sha if _SHA_RE.match(sha) else None
    return None


def _download_headers(location: str, endpoint: str) -> dict[str, str]:
    headers = build_hf_headers()
    host = urlsplit(location).hostname or ""
    if host != urlsplit(endpoint).hostname and host not in _HUB_HOSTS:
        headers.pop("authorization", None)  # signed CDN URL: the token must not leave the hub
    return headers


def fetch_remote(mf: ModelFile, endpoint: str) -> Remote:
    """HEAD the file on the hub and work out which sha256 it must have."""
    url = hf_hub_url(mf.repo_id, mf.filename, revision=mf.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    etag = (meta.etag or "").lower() or None
    size = meta.size if meta.size is not None else mf.size
    if mf.size is not None and meta.size is not None and mf.size != meta.size:
        raise DownloadError(f"{mf.key}: the hub has {meta.size} bytes but models.toml says size = {mf.size}; fix models.toml")
    sha = mf.sha256 or _lfs_sha256(mf, endpoint)
    if sha is None and etag and _SHA_RE.match(etag):
        sha = etag  # an LFS file's etag is its sha256
    location = meta.location or url
    return Remote(location, size, etag, sha, _download_headers(location, endpoint))


# ---------------------------------------------------------------- one file


def partial_path(models_dir: Path, mf: ModelFile, etag: str | None) -> Path:
    """Staging file, keyed by etag so a changed upstream file never resumes old bytes."""
    tag = re.sub(r"[^A-Za-z0-9]", "", etag or "")[:16] or "noetag"
    return models_dir / PARTIAL_DIR / mf.repo_id / f"{mf.filename}.{tag}.part"


def _drop_stale_partials(part: Path) -> None:
    stem = part.name.rsplit(".", 2)[0]
    for other in part.parent.glob(f"{glob_escape(stem)}.*.part"):
        if other != part:
            other.unlink(missing_ok=True)


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove now-empty staging folders up to and including ``stop``."""
    while folder == stop or stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fetch(mf: ModelFile, remote: Remote, models_dir: Path, out: IO[str] | None) -> Path:
    part = partial_path(models_dir, mf, remote.etag)
    part.parent.mkdir(parents=True, exist_ok=True)
    _drop_stale_partials(part)
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0
    if have:
        _say(f"  resuming at {human_size(have)} of {human_size(remote.size)}", out)
    try:
        with open(part, "ab") as f:
            http_get(
                remote.url,
                f,
                resume_size=have,
                headers=dict(remote.headers),
                expected_size=remote.size,
                displayed_filename=Path(mf.filename).name,
            )
    except NETWORK_ERRORS as exc:
        raise DownloadError(
            f"{mf.key}: the connection to the hub kept dropping ({_one_line(exc, 80)}); run the same command again to resume"
        ) from None
    except OSError as exc:
        if "Consistency check failed" not in str(exc):
            raise
        if remote.size is not None and part.stat().st_size > remote.size:
            part.unlink()
        raise DownloadError(
            f"{mf.key}: download incomplete ({part.stat().st_size if part.exists() else 0}"
            f" of {remote.size} bytes); run the same command again to resume"
        ) from None
    return part


def _check_sha(mf: ModelFile, staged: Path, expected: str | None, final: Path, out: IO[str] | None) -> str | None:
    if expected is None:
        _say(f"  warning: no sha256 known for {mf.key}; checked its size only", out)
        return None
    got = sha256_file(staged)
    if got != expected:
        staged.unlink(missing_ok=True)
        kept = "your existing file was left as it was" if final.exists() else "nothing was installed"
        raise DownloadError(f"{mf.key}: sha256 mismatch (expected {expected}, got {got}); the download was discarded and {kept}")
    return got


def _existing_ok(mf: ModelFile, final: Path, remote: Remote, out: IO[str] | None) -> bool:
    """Whether a file already at the final path (e.g. placed by hand) is the right one."""
    if remote.size is not None and final.stat().st_size != remote.size:
        ok = False
    elif remote.sha256 is None:
        ok = remote.size is not None
    else:
        ok = sha256_file(final) == remote.sha256
    if not ok:
        _say(
            f"  {final} does not match the hub; fetching a fresh copy (the old file is replaced only once the new one verifies)",
            out,
        )
    return ok


def download_file(mf: ModelFile, models_dir: Path, endpoint: str | None = None, out: IO[str] | None = None) -> Outcome:
    """Make ``models_dir/repo_id/filename`` present and verified; never raises for hub trouble."""
    endpoint = endpoint or hub_endpoint()
    final = mf.local_path(models_dir)
    if is_verified(models_dir, mf):
        return Outcome(mf, final, "present", "already present (verified earlier)")
    try:
        checked = final.is_file() and mf.sha256 is not None
        if checked and sha256_file(final) == mf.sha256:
            _remember(models_dir, mf, mf.sha256)
            return Outcome(mf, final, "present", "already present (sha256 verified)")
        if checked:
            _say(f"  {final} does not match the sha256 in models.toml; fetching a fresh copy", out)
        remote = fetch_remote(mf, endpoint)
        if final.is_file() and not checked and _existing_ok(mf, final, remote, out):
            _remember(models_dir, mf, remote.sha256)
            return Outcome(mf, final, "present", "already present (verified against the hub)")
        _say(f"  downloading {human_size(remote.size)} from {endpoint}", out)
        staged = _fetch(mf, remote, models_dir, out)
        sha = _check_sha(mf, staged, remote.sha256, final, out)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        _prune_empty(staged.parent, models_dir / PARTIAL_DIR)
        _remember(models_dir, mf, sha)
        return Outcome(mf, final, "downloaded", "sha256 verified" if sha else "size checked")
    except DownloadError as exc:
        return Outcome(mf, final, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the file
        return Outcome(mf, final, "failed", explain(exc, mf, endpoint, final))


def explain(exc: BaseException, mf: ModelFile, endpoint: str, final: Path) -> str:
    """One line saying which file failed, why, and what to do."""
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    rev = mf.revision or "main"
    if isinstance(exc, GatedRepoError):
        return f"{mf.key}: {mf.repo_id} is a gated repo; accept its licence at {endpoint}/{mf.repo_id} and {login}"
    if isinstance(exc, RevisionNotFoundError):
        return f"{mf.key}: revision '{rev}' does not exist in {mf.repo_id}; fix models.toml"
    if isinstance(exc, EntryNotFoundError):
        return f"{mf.key}: not found on the hub ({mf.repo_id} has no {mf.filename} at {rev}); fix models.toml"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{mf.key}: repository {mf.repo_id} not found at {endpoint} (if it is private or gated, {login})"
    if isinstance(exc, OfflineModeIsEnabled):
        return f"{mf.key}: HF_HUB_OFFLINE is set, so the hub is not contacted; unset it or place the file by hand at {final}"
    if isinstance(exc, HfHubHTTPError):
        return _explain_http(exc, mf, endpoint, final, login)
    if isinstance(exc, NETWORK_ERRORS):
        return f"{mf.key}: cannot reach the hub at {endpoint} ({_one_line(exc, 80)}); place the file by hand at {final}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"{mf.key}: not enough disk space under {final.parent}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{mf.key}: {exc.strerror}: {exc.filename or final}"
    return f"{mf.key}: {type(exc).__name__}: {_one_line(exc)}"


def _explain_http(exc: HfHubHTTPError, mf: ModelFile, endpoint: str, final: Path, login: str) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return f"{mf.key}: the hub refused access (401): {mf.repo_id} is gated or private; {login}"
    if status == 403:
        return (
            f"{mf.key}: access denied (403); accept the licence at {endpoint}/{mf.repo_id} with the account your token belongs to"
        )
    if status == 404:
        return f"{mf.key}: not found on the hub (404); fix models.toml"
    return f"{mf.key}: the hub at {endpoint} answered HTTP {status}; try again later or place the file by hand at {final}"


# ---------------------------------------------------------------- several profiles


def plan(profiles: Iterable[Profile]) -> list[tuple[ModelFile, list[str]]]:
    """Unique files to fetch (or, for local ``path`` files, to check), each with the
    "profile:role" labels that need it."""
    seen: dict[tuple[str, str | None], tuple[ModelFile, list[str]]] = {}
    for profile in profiles:
        for role, mf in profile.files.items():
            entry = seen.setdefault((mf.key, mf.revision), (mf, []))
            entry[1].append(f"{profile.name}:{role}")
    return list(seen.values())


def _local_outcome(mf: ModelFile) -> Outcome:
    """A profile's own file: nothing to download; say whether it is there."""
    assert mf.local is not None
    problem = file_problem(mf.local)
    if problem is None:
        return Outcome(mf, mf.local, "present", f"local file {mf.local}")
    return Outcome(mf, mf.local, "failed", f"{mf.local}: {problem} (the profile names this local path; fix models.toml)")


def run_download(profiles: list[Profile], models_dir: Path, out: IO[str] | None = None) -> int:
    """Download every file of ``profiles``; print one line per failure and a summary."""
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the models dir {models_dir}: {exc.strerror or exc}") from None
    endpoint, files = hub_endpoint(), plan(profiles)
    outcomes = []
    for i, (mf, labels) in enumerate(files, 1):
        _say(f"[{i}/{len(files)}] {', '.join(labels)}: {mf.key}", out)
        outcome = _local_outcome(mf) if mf.is_local else download_file(mf, models_dir, endpoint, out)
        _say(f"  {outcome.status}: {outcome.detail}" if outcome.status != "failed" else "  failed", out)
        outcomes.append(outcome)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        _say(f"error: {o.detail}", out)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("downloaded", "present", "failed")}
    _say(
        f"{len(outcomes)} file(s) in {models_dir}: {counts['downloaded']} downloaded, "
        f"{counts['present']} already present, {counts['failed']} failed",
        out,
    )
    return 1 if failed else 0
