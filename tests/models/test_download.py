"""`eft-local download` against a stand-in hub on 127.0.0.1 (tests/hubstub.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eft_local.cli.models import register
from eft_local.models.download import RECORD_FILE, partial_path
from eft_local.models.profiles import ModelFile
from tests.models.hubstub import StubHub, closed_port_url, synthetic_gguf

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES = {  # role -> (repo_id, filename)
    "base": ("org/Big-GGUF", "big.Q4_K_M.gguf"),
    "chat": ("org/Small-Instruct-GGUF", "small-instruct.Q8_0.gguf"),
    "reference": ("org/Small-GGUF", "small.Q8_0.gguf"),
}


def write_models(path: Path, extra: dict[str, dict[str, str]] | None = None) -> Path:
    lines = ['default = "tiny"', "[profiles.tiny]", 'description = "test triple"']
    for role, (repo, fname) in FILES.items():
        fields = {"repo_id": repo, "filename": fname, **(extra or {}).get(role, {})}
        inner = ", ".join(f'{k} = "{v}"' for k, v in fields.items())
        lines.append(f"{role} = {{ {inner} }}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("EFT_LOCAL_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


@pytest.fixture
def hub(env, monkeypatch):
    stub = StubHub().start()
    for seed, (repo, fname) in enumerate(FILES.values()):
        stub.add(repo, fname, synthetic_gguf(seed))
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    yield stub
    stub.stop()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eft-local")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def download(env: Path, *extra: str, models: Path | None = None) -> int:
    models = models or write_models(env / "models.toml")
    return run_cli(["download", "tiny", "--models-file", str(models), *extra])


def final(env: Path, role: str) -> Path:
    repo, fname = FILES[role]
    return env / "models" / repo / fname


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def leftover_partials(env: Path) -> list[Path]:
    return list((env / "models").rglob("*.part"))


@pytest.mark.parametrize("redirect", [False, True], ids=["direct", "cdn-redirect"])
def test_fresh_download_installs_verified_files(hub, env, capsys, redirect):
    hub.redirect = redirect
    assert download(env) == 0
    for role, (repo, fname) in FILES.items():
        assert final(env, role).read_bytes() == hub.files[(repo, fname)].data
    records = json.loads((env / "models" / RECORD_FILE).read_text())["files"]
    assert set(records) == {f"{r}/{f}" for r, f in FILES.values()}
    assert not leftover_partials(env) and not (env / "models" / ".partial").exists()
    err = capsys.readouterr().err
    assert "3 downloaded, 0 already present, 0 failed" in err
    assert "[1/3] tiny:base: org/Big-GGUF/big.Q4_K_M.gguf" in err


def test_present_files_are_skipped_without_network(hub, env, capsys):
    assert download(env) == 0
    hub.log.clear()
    assert download(env) == 0
    assert hub.log == []  # verified record matched: the hub was not even asked
    assert "0 downloaded, 3 already present" in capsys.readouterr().err


def test_changed_file_is_reverified_and_replaced(hub, env, capsys):
    assert download(env) == 0
    path = final(env, "chat")
    good = path.read_bytes()
    path.write_bytes(b"X" * len(good))  # same size, new mtime, wrong bytes
    assert download(env) == 0
    assert path.read_bytes() == good
    assert "1 downloaded, 2 already present" in capsys.readouterr().err


def test_file_placed_by_hand_is_verified_not_downloaded(hub, env):
    path = final(env, "base")
    path.parent.mkdir(parents=True)
    path.write_bytes(hub.files[FILES["base"]].data)
    assert download(env) == 0
    assert not [r for r in hub.requests("GET") if r["path"].endswith(FILES["base"][1])]


def test_resume_after_connection_cut_mid_file(hub, env):
    # huggingface_hub hands data over in 10 MiB chunks, so cut after the first one
    cut = 11 * 2**20
    f = hub.add(*FILES["base"], synthetic_gguf(7, size=12 * 2**20), cut_after=cut, cuts_left=1)
    assert download(env) == 0
    assert final(env, "base").read_bytes() == f.data
    ranges = [r["range"] for r in hub.requests("GET") if r["path"].endswith(FILES["base"][1])]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1].startswith("bytes=") and 0 < int(ranges[1][6:-1]) <= cut


def test_resume_partial_left_by_an_interrupted_run(hub, env):
    repo, fname = FILES["reference"]
    f = hub.files[(repo, fname)]
    part = partial_path(env / "models", ModelFile(repo, fname), f.sha256)
    part.parent.mkdir(parents=True)
    part.write_bytes(f.data[:120_000])
    assert download(env) == 0
    assert final(env, "reference").read_bytes() == f.data
    ranges = [r["range"] for r in hub.requests("GET") if r["path"].endswith(fname)]
    assert ranges == ["bytes=120000-"]
    assert not part.exists()


@pytest.mark.parametrize("paths_info", [True, False], ids=["lfs-metadata", "etag-fallback"])
def test_sha256_mismatch_rejects_file_and_names_it(hub, env, capsys, paths_info):
    hub.paths_info = paths_info
    f = hub.files[FILES["chat"]]
    f.serve = bytes(b ^ 0xFF for b in f.data)  # right size, wrong bytes
    assert download(env) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "sha256 mismatch" in errors[0]
    assert FILES["chat"][1] in errors[0] and f.sha256 in errors[0]
    assert not final(env, "chat").exists()
    assert final(env, "base").exists() and final(env, "reference").exists()
    assert not leftover_partials(env)


def test_failed_verification_keeps_the_users_file(hub, env, capsys):
    path = final(env, "chat")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"my own older copy")
    f = hub.files[FILES["chat"]]
    f.serve = bytes(b ^ 0xFF for b in f.data)
    assert download(env) == 1
    assert path.read_bytes() == b"my own older copy"
    assert "left as it was" in capsys.readouterr().err


def test_sha256_pinned_in_models_toml_wins_over_the_hub(hub, env, capsys):
    pinned = hashlib.sha256(b"some other build").hexdigest()
    models = write_models(env / "models.toml", {"base": {"sha256": pinned}})
    assert download(env, models=models) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"expected {pinned}" in errors[0]
    assert not final(env, "base").exists()


def test_missing_file_on_hub_is_one_clear_line(hub, env, capsys):
    del hub.files[FILES["reference"]]
    hub.add(FILES["reference"][0], "other.gguf", b"GGUF")  # repo exists, file does not
    assert download(env) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    assert "not found on the hub" in errors[0] and FILES["reference"][1] in errors[0]
    assert final(env, "base").exists() and final(env, "chat").exists()


def test_gated_repo_without_token_says_how_to_log_in(hub, env, capsys, monkeypatch):
    hub.gated.add(FILES["base"][0])
    assert download(env) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1
    assert "gated" in errors[0] and "hf auth login" in errors[0] and FILES["base"][1] in errors[0]
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert download(env) == 0
    assert final(env, "base").read_bytes() == hub.files[FILES["base"]].data


def test_offline_fails_one_line_per_file_with_manual_placement(env, capsys, monkeypatch):
    endpoint = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert download(env) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 3
    for line, role in zip(errors, FILES):
        assert f"cannot reach the hub at {endpoint}" in line
        assert f"place the file by hand at {final(env, role)}" in line


def test_download_all_fetches_shared_files_once(hub, env, capsys):
    models = write_models(env / "models.toml")
    with models.open("a") as fh:
        repo, fname = FILES["base"]
        fh.write(
            f'[profiles.same]\nbase = {{ repo_id = "{repo}", filename = "{fname}" }}\n'
            f'chat = {{ repo_id = "{repo}", filename = "{fname}" }}\n'
            f'reference = {{ repo_id = "{repo}", filename = "{fname}" }}\n'
        )
    assert run_cli(["download", "--all", "--models-file", str(models)]) == 0
    assert len(hub.requests("GET")) == 3
    assert "tiny:base, same:base, same:chat, same:reference" in capsys.readouterr().err


def test_models_command_reports_present_missing_unverified(hub, env, capsys):
    models = write_models(env / "models.toml")
    assert run_cli(["download", "tiny", "--models-file", str(models)]) == 0
    final(env, "chat").unlink()
    final(env, "reference").write_bytes(b"edited")
    capsys.readouterr()
    assert run_cli(["models", "--models-file", str(models)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in FILES}
    assert rows == {"base": "present", "chat": "missing", "reference": "unverified"}
    assert f"run `eft-local download tiny --models-file {models}`" in out


def test_script_downloads_like_the_cli(hub, env):
    models = write_models(env / "models.toml")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "download_models.py"), "tiny", "--models-file", str(models)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert final(env, "base").read_bytes() == hub.files[FILES["base"]].data


def test_profile_deltas_are_downloaded_like_the_three_roles(hub, env, capsys):
    hub.add("org/Safe-GGUF", "safe.gguf", synthetic_gguf(7))
    hub.add("org/SafeRef-GGUF", "safe-ref.gguf", synthetic_gguf(8))
    models = write_models(env / "models.toml")
    models.write_text(
        models.read_text() + "[profiles.tiny.deltas.safe]\n"
        'chat = { repo_id = "org/Safe-GGUF", filename = "safe.gguf" }\n'
        'reference = { repo_id = "org/SafeRef-GGUF", filename = "safe-ref.gguf" }\nweight = 0.5\n'
    )
    assert download(env, models=models) == 0
    assert (env / "models" / "org/Safe-GGUF/safe.gguf").read_bytes() == hub.files[("org/Safe-GGUF", "safe.gguf")].data
    assert (env / "models" / "org/SafeRef-GGUF/safe-ref.gguf").is_file()
    err = capsys.readouterr().err
    assert "5 downloaded" in err and "tiny:safe.reference" in err
