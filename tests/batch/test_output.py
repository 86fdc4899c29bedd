"""`run --output`: partial-then-rename, special files, one writer per output, strict JSON rows, disk full, exit status."""

from __future__ import annotations

import json

import pytest

from eft_local.cli import main
from eft_local.errors import UserError
from tests.conftest import role_args, run_cli


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def last_line(err: str) -> str:
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()][-1]


HUGE = 10**400  # an integer no float can hold


# -- --output: regular files get partial-then-rename; nothing else is ever replaced -------------
from eft_local.batch.output import check_output, open_output  # noqa: E402


def write_rows(out, prompt_file=None, n=2):
    with open_output(out, prompt_file) as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "token_ids": [], "finish_reason": "stop"}) + "\n")


def test_symlink_output_writes_its_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real" / "out.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    write_rows(link)
    assert link.is_symlink() and link.resolve() == real
    assert len(rows(real.read_text())) == 2
    assert not list(tmp_path.glob("*.partial")) and not list(real.parent.glob("*.partial"))


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "new.jsonl")
    write_rows(link)
    assert link.is_symlink() and len(rows((tmp_path / "new.jsonl").read_text())) == 2


def test_replaced_file_keeps_its_permissions(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    out.chmod(0o640)
    write_rows(out)
    assert (out.stat().st_mode & 0o777) == 0o640 and len(rows(out.read_text())) == 2


@pytest.mark.parametrize("dev", ["/dev/null", "/dev/zero"])
def test_character_device_is_written_not_replaced(dev):
    import os
    import stat

    write_rows(dev)
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert not os.path.exists(dev + ".partial")


def test_fifo_streams_rows_as_they_come(tmp_path):
    import os
    import threading

    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.extend(open(fifo).read().splitlines()))
    reader.start()
    write_rows(fifo, n=3)
    reader.join(10)
    assert len(got) == 3 and fifo.is_fifo() and not (tmp_path / "rows.fifo.partial").exists()


def test_fd_aliases_write_to_the_open_descriptor(tmp_path, capfd):
    write_rows("/dev/stderr", n=1)
    write_rows("/dev/fd/2", n=1)
    assert len(rows(capfd.readouterr().err)) == 2


@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda d: str(d), "directory"),
        (lambda d: str(d) + "/", "directory"),
        (lambda d: "", "empty"),
        (lambda d: "   ", "empty"),
        (lambda d: str(d / "missing" / "o.jsonl"), "does not exist"),
        (lambda d: str(d / "p.txt"), "prompt file itself"),
        (lambda d: str(d / "p-link.txt"), "prompt file itself"),
        (lambda d: str(d / "taken.jsonl"), "not a partial result"),
        (lambda d: str(d / "taken-dir.jsonl"), "not a partial result"),
        (lambda d: str(d / "taken-link.jsonl"), "not a partial result"),
        (lambda d: str(d / ("x" * 250)), "cannot write"),
        (lambda d: "/dev/fd/97", "not open"),
        (lambda d: str(d / "model.gguf"), "GGUF model file"),
    ],
)
def test_bad_outputs_are_refused_in_one_line(tmp_path, make, expect):
    (tmp_path / "p.txt").write_text("hello\n")
    (tmp_path / "p-link.txt").symlink_to(tmp_path / "p.txt")
    (tmp_path / "taken.jsonl.partial").write_text("my own notes\n")
    (tmp_path / "taken-dir.jsonl.partial").mkdir()
    (tmp_path / "taken-link.jsonl.partial").symlink_to(tmp_path / "p.txt")
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=expect) as e:
        check_output(make(tmp_path), tmp_path / "p.txt")
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_our_own_partial_leftover_is_reused(tmp_path):
    out = tmp_path / "o.jsonl"
    (tmp_path / "o.jsonl.partial").write_text(json.dumps({"id": 0, "token_ids": [1], "finish_reason": "stop"}) + "\n")
    write_rows(out, n=1)
    assert len(rows(out.read_text())) == 1 and not (tmp_path / "o.jsonl.partial").exists()


def test_read_only_output_is_refused(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anything")
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    out.chmod(0o444)
    with pytest.raises(UserError, match="read-only"):
        check_output(out)


def test_bad_output_fails_before_any_model_loads(family, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello\n")
    for out in (str(tmp_path), "", str(prompt)):
        r = run_cli("run", "--prompt-file", str(prompt), "--output", out, *role_args(family))
        assert r.returncode == 2, r.stderr
        assert "loading" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert prompt.read_text() == "hello\n"


def test_cli_output_through_a_symlink_and_to_dev_null(family, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello\n")
    real = tmp_path / "real.jsonl"
    (tmp_path / "link.jsonl").symlink_to(real)
    r = run_cli(
        "run", "--prompt-file", str(prompt), "--output", str(tmp_path / "link.jsonl"), *role_args(family), "--max-tokens", "3"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.jsonl").is_symlink() and len(rows(real.read_text())) == 1
    r = run_cli("run", "--prompt-file", str(prompt), "--output", "/dev/null", *role_args(family), "--max-tokens", "3")
    assert r.returncode == 0, r.stderr


# -- exit status: every row failed -> non-zero, rows still written ------------------------------
def test_every_row_failed_exits_non_zero_and_says_how_many(family, tmp_path):
    prompt = tmp_path / "p.jsonl"
    prompt.write_text('{"prompt": ""}\n{"messages": []}\n')
    out = tmp_path / "o.jsonl"
    r = run_cli("run", "--prompt-file", str(prompt), "--output", str(out), *role_args(family))
    assert r.returncode == 1, r.stderr
    assert len(rows(out.read_text())) == 2
    assert "2 error row(s)" in r.stderr.strip().splitlines()[-1]
    prompt.write_text('{"prompt": ""}\n{"prompt": "hello"}\n')
    r = run_cli("run", "--prompt-file", str(prompt), "--output", str(out), *role_args(family), "--max-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "1 error row(s) (first: line 1" in r.stderr.strip().splitlines()[-1]


# -- 11: every output line is strict JSON ------------------------------------------------------
def strict_rows(text: str) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in text.split("\n") if line]


@pytest.mark.parametrize("bad_id", ["NaN", "Infinity", "-Infinity", "[1, NaN]", '{"k": Infinity}'])
def test_non_finite_ids_become_strict_json_error_rows(tmp_path, models, bad_id):
    pf = tmp_path / "p.jsonl"
    pf.write_text(f'{{"id": {bad_id}, "prompt": "a"}}\n{{"id": 2, "prompt": NaN}}\n{{"id": 3, "prompt": "ok"}}\n')
    out = tmp_path / "out.jsonl"
    assert main(["run", "--prompt-file", str(pf), "--output", str(out), *models, "--max-tokens", "2"]) == 0
    got = strict_rows(out.read_text())
    assert (
        got[0]["finish_reason"] == "error"
        and '"id"' in got[0]["error"]
        and ("NaN" in json.dumps(got[0]["id"]) or "Infinity" in json.dumps(got[0]["id"]))
    )
    assert got[1]["prompt"] == "NaN" and got[1]["finish_reason"] == "error"
    assert got[2]["id"] == 3 and got[2]["finish_reason"] != "error"


def test_row_json_never_writes_nan():
    from eft_local.batch.output import row_json

    assert json.loads(row_json({"a": float("nan"), "b": [float("-inf")], "c": "\u2028"})) == {
        "a": "NaN",
        "b": ["-Infinity"],
        "c": "\u2028",
    }


# -- 13: two runs, one --output -------------------------------------------------------------------
def cli(*args: str, stdin=None, stdout=None):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "eft_local", *args],
        stdin=stdin,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("alias", ["same", "symlink", "dotted"])
def test_second_run_on_the_same_output_fails_before_loading(tmp_path, family, alias):
    from eft_local.batch.output import claim_output

    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    out = tmp_path / "out.jsonl"
    other = {"same": out, "symlink": tmp_path / "link.jsonl", "dotted": tmp_path / "." / "out.jsonl"}[alias]
    if alias == "symlink":
        other.symlink_to(out)
    with claim_output(out, pf) as first, first.rows() as rows:  # a run in progress
        rows.write('{"id": 0, "token_ids": [], "finish_reason": "stop"}\n')
        r = cli(
            "run",
            "--prompt-file",
            str(pf),
            "--output",
            str(other),
            *role_args(family, threads=None),
        )
        assert r.returncode == 2
        line = last_line(r.stderr)
        assert "another eft-local run is writing" in line and "loading" not in r.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [0]  # the first run's output, whole
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_a_claim_follows_a_partial_renamed_under_it(tmp_path):
    """The lock holder renamed OUT.partial to OUT between our open and our lock."""
    import os

    from eft_local.batch.output import _lock_partial, check_output

    target = check_output(tmp_path / "o.jsonl")
    target.partial.write_text("")
    stale = os.open(target.partial, os.O_RDONLY)
    os.replace(target.partial, target.path)
    fd, _ = _lock_partial(target)
    assert os.fstat(fd).st_ino == target.partial.stat().st_ino != os.fstat(stale).st_ino
    os.close(fd)
    os.close(stale)


def test_failed_start_leaves_no_partial(tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    r = cli(
        "run",
        "--prompt-file",
        str(pf),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--base",
        "nope.gguf",
        "--chat",
        "x",
        "--reference",
        "y",
    )
    assert r.returncode == 2 and not list(tmp_path.glob("*.partial"))


# -- 14: the output is never the prompt file ----------------------------------------------------
@pytest.mark.parametrize(
    "prompt_arg, out_arg",
    [
        ("-", "p.txt"),
        ("-", "/dev/stdin"),
        ("p.txt", "/dev/stdin"),
        ("-", "/proc/self/fd/0"),
        ("-", "/dev/fd/0"),
        ("-", "hardlink.txt"),
        ("p.txt", "hardlink.txt"),
        ("/dev/stdin", "p.txt"),
    ],
)
def test_output_is_never_the_prompt_file(tmp_path, monkeypatch, prompt_arg, out_arg):
    import os

    monkeypatch.chdir(tmp_path)
    pf = tmp_path / "p.txt"
    pf.write_text("hello\nworld\n")
    os.link(pf, tmp_path / "hardlink.txt")
    with open(pf) as stdin:
        r = cli(
            "run", "--prompt-file", prompt_arg, "--output", out_arg, "--base", "b", "--chat", "c", "--reference", "r", stdin=stdin
        )
    assert r.returncode == 2, r.stderr
    assert "prompt file" in last_line(r.stderr) or "reading only" in last_line(r.stderr)
    assert pf.read_text() == "hello\nworld\n" and not list(tmp_path.glob("*.partial"))


def test_stdout_appending_to_the_prompt_file_is_refused(tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    with open(pf, "a") as out:
        r = cli("run", "--prompt-file", str(pf), "--base", "b", "--chat", "c", "--reference", "r", stdout=out)
    assert r.returncode == 2 and "standard output is the prompt file" in last_line(r.stderr)
    assert pf.read_text() == "hello\n"


def test_prompts_from_a_pipe_may_go_to_a_file(tmp_path):
    from eft_local.batch.output import check_output

    assert check_output(tmp_path / "o.jsonl", "-").kind == "file"


# -- 16: disk full while writing --output --------------------------------------------------------
def test_disk_full_on_a_device_is_one_line(family, tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    r = cli(
        "run",
        "--prompt-file",
        str(pf),
        "--output",
        "/dev/full",
        *role_args(family, threads=None),
        "--max-tokens",
        "2",
    )
    assert r.returncode == 2 and "disk full" in last_line(r.stderr) and "unexpected" not in r.stderr


def test_disk_full_keeps_whole_rows_in_the_partial(tmp_path, monkeypatch):
    import errno
    import os

    from eft_local.batch import output

    real_write, calls = os.write, []

    def filling(fd, data):  # the third row: half of it fits, then the disk is full
        calls.append(1)
        if len(calls) == 3:
            return real_write(fd, bytes(data[: len(data) // 2]))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", filling)
    out = tmp_path / "o.jsonl"
    with pytest.raises(output.WriteFailed, match="disk full") as e:
        with output.open_output(out) as f:
            for i in range(5):
                f.write(json.dumps({"id": i, "token_ids": [], "finish_reason": "stop"}) + "\n")
    assert "2 whole row(s)" in str(e.value) and "\n" not in str(e.value)
    partial = tmp_path / "o.jsonl.partial"
    assert [json.loads(x)["id"] for x in partial.read_text().split("\n") if x] == [0, 1]
    assert partial.read_text().endswith("\n") and not out.exists()


def test_file_size_limit_mid_row_keeps_whole_rows(tmp_path):
    """A real short write from the kernel (RLIMIT_FSIZE), not a simulated one."""
    import subprocess
    import sys

    out = tmp_path / "o.jsonl"
    code = f"""
import json, resource, signal
from eft_local.batch.output import open_output, WriteFailed
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (250, 250))
try:
    with open_output({str(out)!r}) as f:
        for i in range(20):
            f.write(json.dumps({{"id": i, "token_ids": [], "finish_reason": "stop", "pad": "x" * 20}}) + "\\n")
except WriteFailed as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "file size limit" in r.stdout, r.stderr
    kept = (tmp_path / "o.jsonl.partial").read_text()
    assert kept.endswith("\n") and all(json.loads(x) for x in kept.splitlines()) and len(kept) <= 250


def test_huge_file_size_in_models_toml_is_refused(tmp_path):
    from eft_local.models.profiles import load_profiles

    f = tmp_path / "m.toml"
    files = "\n".join(
        f'{r} = {{ repo_id = "o/n", filename = "{r}.gguf"{", size = " + str(HUGE) if r == "chat" else ""} }}'
        for r in ("base", "chat", "reference")
    )
    f.write_text(f"[profiles.p]\n{files}\n")
    with pytest.raises(UserError, match=r"'chat.size' must be a positive integer"):
        load_profiles(f)


@pytest.mark.parametrize("dev, expect", [("/dev/zero", "larger than 4 MiB"), ("/dev/urandom", "not UTF-8")])
def test_endless_models_file_fails_fast(dev, expect, capsys):
    assert main(["models", "--models-file", dev]) == 2
    assert expect in last_line(capsys.readouterr().err)


def test_numbers_past_pythons_digit_limit_name_the_line(tmp_path, capsys):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "a"}\n{"prompt": "b", "seed": ' + "9" * 5000 + "}\n")
    assert main(["run", "--prompt-file", str(pf), "--base", "b", "--chat", "c", "--reference", "r"]) == 2
    assert "line 2" in last_line(capsys.readouterr().err)
    toml = tmp_path / "m.toml"
    toml.write_text("default = 1\nx = " + "9" * 5000 + "\n")
    assert main(["models", "--models-file", str(toml)]) == 2
    assert "too many digits" in last_line(capsys.readouterr().err)


def test_disk_full_on_standard_output_is_one_line(family, tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    with open("/dev/full", "w") as full:
        r = cli("run", "--prompt-file", str(pf), *role_args(family, threads=None), "--max-tokens", "2", stdout=full)
    assert r.returncode == 2 and "disk full while writing standard output" in last_line(r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


# -- the output's reader, encoding and name --------------------------------------------------------
def test_standard_output_closed_by_its_reader_is_one_line(family, tmp_path):
    import subprocess
    import sys

    pf = tmp_path / "p.txt"
    pf.write_text("hello\n" * 50)
    p = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "run", "--prompt-file", str(pf), *role_args(family), "--max-tokens", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.stdout.close()  # `... | head -c 0`
    err = p.stderr.read()
    assert p.wait(60) == 2 and last_line(err) == (
        "eft-local: error: standard output was closed by its reader before every row was written"
    )
    assert "Exception ignored" not in err


def test_a_fifo_closed_by_its_reader_is_one_line(tmp_path):
    import os
    import threading

    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    closed = threading.Event()

    def read_one_row_then_leave():
        with open(fifo) as f:
            f.readline()
        closed.set()

    threading.Thread(target=read_one_row_then_leave, daemon=True).start()
    with pytest.raises(UserError, match=f"^{fifo} was closed by its reader before every row was written$"):
        with open_output(fifo) as f:
            f.write('{"id": 0}\n')
            assert closed.wait(10)
            f.write('{"id": 1}\n')


def test_rows_are_utf8_whatever_the_locale_says(family, tmp_path):
    """Before: PYTHONIOENCODING=ascii (or a Latin-1 locale) made a row with 'é' an unexpected UnicodeEncodeError."""
    pf = tmp_path / "p.txt"
    pf.write_text("héllo €\n", encoding="utf-8")
    r = run_cli("run", "--prompt-file", str(pf), *role_args(family), "--max-tokens", "2", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout)[0]["prompt"] == "héllo €"


def test_an_output_under_an_unknown_users_home_is_one_line():
    with pytest.raises(UserError, match=r"^--output ~nosuchuser/o.jsonl: cannot expand ~nosuchuser"):
        check_output("~nosuchuser/o.jsonl")
