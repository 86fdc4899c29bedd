"""models.toml loading, user overrides, and resolving a profile to local paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eft_local.errors import UserError
from eft_local.models.profiles import (
    ROLES,
    Profile,
    default_models_dir,
    default_profile_name,
    load_profiles,
    parse_models_file,
    resolve_profile,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = """
default = "tiny"
[profiles.tiny]
description = "test"
base = { repo_id = "org/Big-GGUF", filename = "big.gguf" }
chat = { repo_id = "org/Chat-GGUF", filename = "chat.gguf" }
reference = { repo_id = "org/Ref-GGUF", filename = "ref.gguf" }
[profiles.tiny.defaults]
n_ctx = 512
alpha = 0.5
prompt_style = "transcript"
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("EFT_LOCAL_MODELS_DIR", str(tmp_path / "models"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def place(models: Path, repo: str, fname: str) -> Path:
    return write(models / repo / fname, "GGUF")


def user_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "eft-local" / "models.toml"


# ---------------------------------------------------------------- the shipped models.toml


def test_repo_models_toml_has_the_promised_profiles():
    profiles, default = parse_models_file(REPO_ROOT / "models.toml")
    assert default == "qwen2.5-7b"
    assert {"qwen2.5-7b", "llama3-8b", "qwen3-8b", "smollm2-1.7b", "smollm2-downscale"} <= set(profiles)
    default_files = profiles["qwen2.5-7b"].files
    assert "Qwen2.5-7B" in default_files["base"].filename and "Q4_K_M" in default_files["base"].filename
    assert "0.5B-Instruct" in default_files["chat"].filename
    assert "0.5B" in default_files["reference"].filename and "Instruct" not in default_files["reference"].filename
    for p in profiles.values():
        extra = {"bare"} if p.name == "miniature" else set()  # the demo family's second behaviour delta
        assert set(p.files) == set(ROLES) | extra and p.description
        assert p.defaults["prompt_style"] in ("template", "transcript")
        assert {"n_ctx", "temperature", "alpha", "beta"} <= set(p.defaults)


def test_builtin_profiles_load_and_default_is_qwen():
    profiles = load_profiles()
    assert default_profile_name(profiles) == "qwen2.5-7b"


# ---------------------------------------------------------------- sources and overrides


def test_user_file_overrides_by_name_and_adds_profiles(tmp_path):
    write(
        user_file(tmp_path),
        TINY
        + """
[profiles."qwen2.5-7b"]
base = { repo_id = "me/Other-GGUF", filename = "other.gguf" }
chat = { repo_id = "me/Other-GGUF", filename = "other.gguf" }
reference = { repo_id = "me/Other-GGUF", filename = "other.gguf" }
""",
    )
    profiles = load_profiles()
    assert "smollm2-1.7b" in profiles and "tiny" in profiles
    assert profiles["qwen2.5-7b"].files["base"].repo_id == "me/Other-GGUF"
    assert default_profile_name(profiles) == "tiny"


def test_models_file_is_the_only_source(tmp_path):
    write(user_file(tmp_path), TINY.replace("tiny", "from-user"))
    profiles = load_profiles(write(tmp_path / "only.toml", TINY))
    assert list(profiles) == ["tiny"]


# ---------------------------------------------------------------- user mistakes: one clear line


def test_malformed_toml_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.toml", '[profiles.tiny]\nbase = { repo_id = "a/b" \n')
    with pytest.raises(UserError) as exc:
        load_profiles(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "line 2" in msg and "\n" not in msg


def test_unknown_profile_lists_known_names(tmp_path):
    with pytest.raises(UserError, match=r"unknown profile 'nope'; known profiles: tiny"):
        resolve_profile("nope", models_file=write(tmp_path / "m.toml", TINY))


def test_profile_missing_a_role_says_which(tmp_path):
    text = TINY.replace('reference = { repo_id = "org/Ref-GGUF", filename = "ref.gguf" }\n', "")
    with pytest.raises(UserError, match=r"profile 'tiny' is missing role\(s\) reference"):
        load_profiles(write(tmp_path / "m.toml", text))


def test_unquoted_dotted_name_gets_a_hint(tmp_path):
    text = TINY.replace("profiles.tiny", "profiles.tiny.v2")
    with pytest.raises(UserError, match="must be quoted"):
        load_profiles(write(tmp_path / "m.toml", text))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (('"org/Big-GGUF"', '"not a repo"'), "repo_id"),
        (('filename = "big.gguf"', 'filename = "../../etc/passwd"'), "filename"),
        (('filename = "big.gguf"', 'filename = "big.gguf", sha256 = "abc"'), "64 hex"),
        (('prompt_style = "transcript"', 'prompt_style = "chatty"'), "prompt_style"),
        (("n_ctx = 512", 'n_ctx = "big"'), "n_ctx"),
        (('default = "tiny"', 'default = "ghost"'), "default profile 'ghost'"),
    ],
)
def test_invalid_fields_are_rejected(tmp_path, edit, expected):
    with pytest.raises(UserError, match=expected):
        load_profiles(write(tmp_path / "m.toml", TINY.replace(*edit)))


def test_missing_models_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="models file not found"):
        load_profiles(tmp_path / "absent.toml")


# ---------------------------------------------------------------- resolving to paths


def test_resolve_returns_paths_in_models_dir_layout(tmp_path):
    models = tmp_path / "models"
    for repo, fname in (("org/Big-GGUF", "big.gguf"), ("org/Chat-GGUF", "chat.gguf"), ("org/Ref-GGUF", "ref.gguf")):
        place(models, repo, fname)
    resolved = resolve_profile(None, models_file=write(tmp_path / "m.toml", TINY))
    assert resolved.name == "tiny"
    assert resolved.paths["chat"] == models / "org/Chat-GGUF/chat.gguf"
    assert resolved.defaults == {"n_ctx": 512, "alpha": 0.5, "prompt_style": "transcript"}


def test_missing_local_file_names_the_download_command(tmp_path):
    models_file = write(tmp_path / "m.toml", TINY)
    place(tmp_path / "elsewhere", "org/Big-GGUF", "big.gguf")
    with pytest.raises(UserError) as exc:
        resolve_profile("tiny", models_file=models_file, models_dir=tmp_path / "elsewhere")
    msg = str(exc.value)
    assert "chat (org/Chat-GGUF/chat.gguf)" in msg and "reference (org/Ref-GGUF/ref.gguf)" in msg
    assert "base (" not in msg
    assert (f"`eft-local download tiny --models-file {models_file} --models-dir {tmp_path / 'elsewhere'}`") in msg


def test_overrides_take_precedence_and_need_no_profile_file(tmp_path):
    models = tmp_path / "models"
    place(models, "org/Big-GGUF", "big.gguf")
    place(models, "org/Ref-GGUF", "ref.gguf")
    mine = write(tmp_path / "my-chat.gguf", "GGUF")
    base = write(tmp_path / "my-base.gguf", "GGUF")
    resolved = resolve_profile(
        "tiny", models_file=write(tmp_path / "m.toml", TINY), overrides={"chat": str(mine), "base": str(base), "reference": None}
    )
    assert resolved.paths == {"base": base, "chat": mine, "reference": models / "org/Ref-GGUF/ref.gguf"}


def test_override_to_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"--chat .*no such file"):
        resolve_profile("tiny", models_file=write(tmp_path / "m.toml", TINY), overrides={"chat": str(tmp_path / "ghost.gguf")})


def test_models_dir_defaults_follow_env(tmp_path, monkeypatch):
    assert default_models_dir() == tmp_path / "models"
    monkeypatch.delenv("EFT_LOCAL_MODELS_DIR")
    assert default_models_dir() == tmp_path / "data" / "eft-local" / "models"


def test_script_reports_bad_toml_in_one_line_without_traceback(tmp_path):
    bad = write(tmp_path / "bad.toml", "default = \n")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "download_models.py"), "--models-file", str(bad)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("download_models.py: error: ") and "line 1" in lines[0]


DELTAS = (
    TINY
    + """
[profiles.tiny.deltas.safe]
chat = { repo_id = "org/Safe-GGUF", filename = "safe.gguf" }
weight = 0.5
[profiles.tiny.deltas.terse]
chat = { repo_id = "org/Terse-GGUF", filename = "terse.gguf" }
reference = { repo_id = "org/TerseRef-GGUF", filename = "terse-ref.gguf" }
"""
)


def test_profile_deltas_resolve_with_default_weights(tmp_path):
    f = write(tmp_path / "m.toml", DELTAS)
    profiles, _ = parse_models_file(f)
    p = profiles["tiny"]
    assert set(p.files) == {*ROLES, "safe", "terse", "terse.reference"}
    assert p.weights == {"safe": 0.5, "terse": 1.0}
    models = tmp_path / "models"
    for mf in p.files.values():
        place(models, mf.repo_id, mf.filename)
    r = resolve_profile("tiny", models_file=f, models_dir=models)
    assert r.paths["terse.reference"] == models / "org/TerseRef-GGUF/terse-ref.gguf"
    assert r.weights == {"safe": 0.5, "terse": 1.0}


@pytest.mark.parametrize(
    "bad,expect",
    [
        ("[profiles.tiny.deltas.safe]\nweight = 1\n", "'chat' file"),
        ('[profiles.tiny.deltas.safe]\nchat = { repo_id = "o/x", filename = "x.gguf" }\nweight = "big"\n', "weight"),
        ('[profiles.tiny.deltas.safe]\nchat = { repo_id = "o/x", filename = "x.gguf" }\nweight = nan\n', "finite"),
        ('[profiles.tiny.deltas.base]\nchat = { repo_id = "o/x", filename = "x.gguf" }\n', "delta name"),
        ('[profiles.tiny.deltas.safe]\nchat = { repo_id = "o/x", filename = "x.gguf" }\ncolour = 1\n', "unknown key"),
    ],
)
def test_bad_profile_deltas_fail_in_one_line(tmp_path, bad, expect):
    with pytest.raises(UserError, match=expect):
        parse_models_file(write(tmp_path / "m.toml", TINY + bad))


@pytest.mark.parametrize(
    "line,expect",
    [
        ("seed = -1", "seed"),
        ("n_gpu_layers = 1.5", "gpu_layers"),
        ("beta = nan", "finite"),
        ("top_p = inf", "finite"),
        ("threads = 0", "threads"),
        ("repeat_penalty = 1.1", "unknown setting"),
        ("temperature = true", "number"),
    ],
)
def test_profile_defaults_checked_by_the_schema(tmp_path, line, expect):
    with pytest.raises(UserError, match=expect):
        parse_models_file(write(tmp_path / "m.toml", TINY + line + "\n"))


def test_profile_seed_and_gpu_layers_take_effect(tmp_path):
    import argparse

    from eft_local.cli.options import resolve_settings

    profiles, _ = parse_models_file(write(tmp_path / "m.toml", TINY + "seed = 9\nn_gpu_layers = 0\nthreads = 1\n"))
    defaults = {**profiles["tiny"].defaults, "weights": {}}
    settings = resolve_settings(argparse.Namespace(), defaults)
    assert (settings["seed"], settings["gpu_layers"], settings["threads"], settings["n_ctx"]) == (9, 0, 1, 512)
    settings = resolve_settings(argparse.Namespace(seed="3"), defaults)
    assert settings["seed"] == 3


# ---------------------------------------------------------------- local files: { path = "..." }
def local_profile(tmp_path: Path, family) -> Path:
    """base by absolute path, chat relative to the models.toml, reference by ~, plus a delta."""
    conf = tmp_path / "conf"
    (conf / "gguf").mkdir(parents=True)
    (conf / "gguf" / "chat.gguf").symlink_to(family.chat)
    return write(
        conf / "models.toml",
        f"""
[profiles.mine]
description = "my own files"
base = {{ path = "{family.base}" }}
chat = {{ path = "gguf/chat.gguf" }}
reference = {{ path = "{family.reference}" }}
[profiles.mine.deltas.style]
chat = {{ path = "./gguf/chat.gguf" }}
reference = {{ path = "{family.reference}" }}
weight = 0.5
[profiles.mixed]
base = {{ path = "{family.base}" }}
chat = {{ repo_id = "org/Chat-GGUF", filename = "chat.gguf" }}
reference = {{ path = "nowhere/ref.gguf" }}
""",
    )


def test_profile_may_name_local_files(tmp_path, family, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the models.toml, not the cwd
    f = local_profile(tmp_path, family)
    r = resolve_profile("mine", models_file=f)
    assert r.paths["base"] == family.base
    assert r.paths["chat"] == f.parent / "gguf" / "chat.gguf" and r.paths["chat"].is_file()
    assert r.paths["style"] == r.paths["chat"] and r.paths["style.reference"] == family.reference
    assert r.weights == {"style": 0.5}


def test_missing_local_file_says_fix_the_path_not_download(tmp_path, family):
    f = local_profile(tmp_path, family)
    with pytest.raises(UserError, match=r"no such file for reference .*nowhere/ref.gguf.*fix its path") as e:
        resolve_profile("mixed", models_file=f)
    assert "download" not in str(e.value)


@pytest.mark.parametrize(
    "entry, expect",
    [
        ('{ path = "" }', "must be a file path"),
        ("{ path = 3 }", "must be a file path"),
        ('{ path = "a.gguf", repo_id = "o/n" }', "takes no repo_id"),
        ('{ path = "a.gguf", sha256 = "x" }', "takes no sha256"),
        ('{ pth = "a.gguf" }', "or path alone"),
    ],
)
def test_bad_local_entries_fail_in_one_line(tmp_path, entry, expect):
    f = write(tmp_path / "m.toml", TINY.replace('{ repo_id = "org/Chat-GGUF", filename = "chat.gguf" }', entry))
    with pytest.raises(UserError, match=expect):
        load_profiles(f)


def test_models_lists_local_files_as_local(tmp_path, family, capsys):
    from eft_local.cli import main

    f = local_profile(tmp_path, family)
    assert main(["models", "--models-file", str(f)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 2}
    assert " local " in lines["base"] and str(family.base) in lines["base"]
    assert " local " in lines["style.reference"]
    assert " missing " in out and "nowhere/ref.gguf" in out


def test_download_skips_local_files(tmp_path, family):
    import io

    from eft_local.models.download import run_download

    profiles = load_profiles(local_profile(tmp_path, family))
    said = io.StringIO()
    assert run_download([profiles["mine"]], tmp_path / "models", out=said) == 0
    assert f"local file {family.base}" in said.getvalue() and "0 downloaded" in said.getvalue()
    missing = Profile("gone", "", {"reference": profiles["mixed"].files["reference"]})  # no hub file: no network
    said = io.StringIO()
    assert run_download([missing], tmp_path / "models", out=said) == 1
    assert "nowhere/ref.gguf: no such file" in said.getvalue()


def test_run_with_a_local_file_profile(tmp_path, family):
    from eft_local.cli import main

    f = local_profile(tmp_path, family)
    pf = write(tmp_path / "p.txt", "hello\n")
    out = tmp_path / "o.jsonl"
    rc = main(
        [
            "run",
            "--profile",
            "mine",
            "--models-file",
            str(f),
            "--prompt-file",
            str(pf),
            "--output",
            str(out),
            "--max-tokens",
            "2",
            "--threads",
            "1",
        ]
    )
    assert rc == 0 and out.read_text().count("\n") == 1


# -- issue 23 #11: a path that can't be a model file is one line naming profile, role and path --------
LONG_NAME = "/tmp/" + "a" * 5000 + ".gguf"  # one component past NAME_MAX
LONG_PATH = "/tmp/" + "a/" * 2100 + "x.gguf"  # short components, past PATH_MAX
UNUSABLE = [
    (LONG_NAME, "File name too long"),
    (LONG_PATH, "File name too long"),
    ("/proc/self/mem", "empty file"),
    ("/dev/null", "special file"),
    ("/dev/zero", "special file"),
    ("/tmp", "a directory"),
]


def bad_path_profile(tmp_path: Path, family, path: str, role: str = "base") -> Path:
    files = {"base": family.base, "chat": family.chat, "reference": family.reference}
    entries = "\n".join(f'{r} = {{ path = "{path if r == role else p}" }}' for r, p in files.items())
    return write(tmp_path / "m.toml", f"[profiles.p]\n{entries}\n")


def run_profile(f: Path, tmp_path: Path, *extra: str) -> list[str]:
    from tests.conftest import run_cli

    pf = write(tmp_path / "p.txt", "hello\n")
    r = run_cli("run", "--models-file", str(f), "--profile", "p", "--prompt-file", str(pf), *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()


@pytest.mark.parametrize("path, reason", [*UNUSABLE, ("~nosuchuser/x.gguf", "cannot expand ~nosuchuser")])
@pytest.mark.parametrize("role", ["base", "chat"])
def test_unusable_profile_path_is_one_line_naming_profile_role_and_path(tmp_path, family, path, reason, role):
    (line,) = run_profile(bad_path_profile(tmp_path, family, path, role), tmp_path)
    assert "profile 'p'" in line and role in line and path in line and reason in line


@pytest.mark.parametrize("path, reason", [*UNUSABLE, ("~nosuchuser/x.gguf", "cannot expand ~nosuchuser")])
def test_unusable_flag_path_is_one_line_naming_the_flag(tmp_path, family, path, reason):
    """The same paths given as --base (with and without a profile)."""
    from tests.conftest import run_cli

    pf = write(tmp_path / "p.txt", "hello\n")
    args = ["run", "--prompt-file", str(pf), "--base", path, "--chat", str(family.chat), "--reference", str(family.reference)]
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert f"--base {path}: " in line and reason in line


def test_a_symlink_loop_is_one_line(tmp_path, family):
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    (line,) = run_profile(bad_path_profile(tmp_path, family, str(loop)), tmp_path)
    assert f"profile 'p': base {loop}: Too many levels of symbolic links" in line


def test_unusable_delta_path_names_the_delta(tmp_path, family):
    text = bad_path_profile(tmp_path, family, str(family.base)).read_text()
    f = write(tmp_path / "m.toml", text + '[profiles.p.deltas.style]\nchat = { path = "/proc/self/mem" }\n')
    (line,) = run_profile(f, tmp_path)
    assert "profile 'p': style /proc/self/mem: an empty file" in line and "--delta style" in line


@pytest.mark.parametrize("flag", ["--models-file", "--models-dir"])
def test_unknown_user_in_a_models_flag_is_one_line(tmp_path, flag, capsys):
    from eft_local.cli import main

    assert main(["models", flag, "~nosuchuser/x"]) == 2
    assert f"{flag} ~nosuchuser/x: cannot expand ~nosuchuser" in capsys.readouterr().err


def test_unknown_user_in_the_models_dir_variable_is_one_line(monkeypatch, capsys):
    from eft_local.cli import main

    monkeypatch.setenv("EFT_LOCAL_MODELS_DIR", "~nosuchuser/models")
    assert main(["models"]) == 2
    assert "$EFT_LOCAL_MODELS_DIR ~nosuchuser/models: cannot expand" in capsys.readouterr().err


@pytest.mark.parametrize("path, reason", UNUSABLE)
def test_models_lists_an_unusable_path_and_says_why(tmp_path, family, path, reason, capsys):
    from eft_local.cli import main

    assert main(["models", "--models-file", str(bad_path_profile(tmp_path, family, path))]) == 0
    out = capsys.readouterr().out
    hint = next(line for line in out.splitlines() if line.startswith("  -> base: "))
    assert " unusable " in out and f"-> base: {path}: " in hint and reason in hint


def test_download_names_an_unusable_local_path(tmp_path, family):
    import io

    from eft_local.models.download import run_download

    profiles = load_profiles(bad_path_profile(tmp_path, family, LONG_NAME))
    said = io.StringIO()
    assert run_download([profiles["p"]], tmp_path / "models", out=said) == 1
    assert f"{LONG_NAME}: File name too long" in said.getvalue()
