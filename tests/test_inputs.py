"""Issue 15 items 10-16: numbers, output JSON, line ends, concurrent/aliased outputs, bounded
and nested inputs, disk full — every input eft-local reads, and every line it writes."""

from __future__ import annotations

import json

import pytest

from eft_local.cli import main
from eft_local.errors import UserError
from eft_local.settings import check, check_weight

HUGE = 10**400  # an integer no float can hold


@pytest.fixture()
def models(family):
    return ["--base", str(family.base), "--chat", str(family.chat), "--reference", str(family.reference), "--threads", "1"]


def last_line(err: str) -> str:
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()][-1]


# -- 10: integers too big for a float ----------------------------------------------------------
@pytest.mark.parametrize("name", ["beta", "alpha", "top_k", "seed", "max_tokens", "temperature", "n_ctx"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, str(HUGE), 2**64 + 1])
def test_huge_integers_are_refused_by_the_schema(name, value):
    with pytest.raises(UserError, match=r"too large|must be|finite"):
        check(name, value, "here")


def test_huge_weight_is_refused():
    with pytest.raises(UserError, match="too large"):
        check_weight("x", HUGE, "weights.x")


def test_huge_seed_flag_exits_2(tmp_path, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("hi\n")
    rc = main(["run", "--prompt-file", str(pf), "--seed", "9" * 400, "--base", "b", "--chat", "c", "--reference", "r"])
    assert rc == 2
    line = last_line(capsys.readouterr().err)
    assert "--seed" in line and "400 digits" in line and len(line) < 200


def test_huge_grid_value_exits_2(tmp_path, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("hi\n")
    rc = main(["run", "--prompt-file", str(pf), "--grid", f"seed=1,{HUGE}", "--base", "b", "--chat", "c", "--reference", "r"])
    assert rc == 2
    assert "--grid seed" in last_line(capsys.readouterr().err)


def test_huge_profile_default_names_the_key(tmp_path):
    from eft_local.models.profiles import load_profiles

    f = tmp_path / "m.toml"
    files = "\n".join(f'{r} = {{ repo_id = "o/n", filename = "{r}.gguf" }}' for r in ("base", "chat", "reference"))
    f.write_text(f"[profiles.p]\n{files}\n[profiles.p.defaults]\nseed = {HUGE}\n")
    with pytest.raises(UserError, match=r"defaults\.seed is too large"):
        load_profiles(f)


def test_huge_numbers_in_rows_are_error_rows(tmp_path, models):
    pf = tmp_path / "p.jsonl"
    bad = [{"prompt": "a", "beta": HUGE}, {"prompt": "b", "top_k": HUGE}, {"prompt": "c", "weights": {"x": -HUGE}}]
    pf.write_text("".join(json.dumps(r) + "\n" for r in [*bad, {"prompt": "ok"}]))
    out = tmp_path / "out.jsonl"
    rc = main(["run", "--prompt-file", str(pf), "--output", str(out), *models, "--max-tokens", "2"])
    assert rc == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["finish_reason"] for r in got] == ["error", "error", "error", got[3]["finish_reason"]]
    assert got[3]["finish_reason"] != "error"
    assert "line 1: beta" in got[0]["error"] and "line 2: top_k" in got[1]["error"] and "weights.x" in got[2]["error"]


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


# -- 12: a line ends at \n or \r\n only ----------------------------------------------------------
@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\r"])
def test_txt_lines_end_only_at_newline(tmp_path, sep):
    from eft_local.batch.prompt_file import read_prompt_file

    pf = tmp_path / "p.txt"
    pf.write_bytes(f"one{sep}still one\r\ntwo\n".encode())
    assert [i.text for i in read_prompt_file(pf)] == [f"one{sep}still one", "two"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0c"])
def test_jsonl_with_raw_unicode_line_separators_is_read(tmp_path, char):
    from eft_local.batch.prompt_file import read_prompt_file

    pf = tmp_path / "p.jsonl"
    pf.write_bytes((json.dumps({"id": "a", "prompt": f"x{char}y"}, ensure_ascii=False) + "\r\n" + '{"prompt": "z"}\n').encode())
    items = read_prompt_file(pf)
    assert [i.text for i in items] == [f"x{char}y", "z"] and items[0].error is None


def test_our_own_output_reads_back_as_prompts(tmp_path):
    """A row holding a raw U+2028 (ensure_ascii=False) is one line to the reader."""
    from eft_local.batch.output import row_json
    from eft_local.batch.prompt_file import read_prompt_file

    pf = tmp_path / "again.jsonl"
    pf.write_text(row_json({"id": 1, "prompt": "a\u2028b\u0085c"}) + "\n", encoding="utf-8")
    assert [i.text for i in read_prompt_file(pf)] == ["a\u2028b\u0085c"]


# -- 15: bounded prompt files ---------------------------------------------------------------------
@pytest.mark.parametrize("dev, expect", [("/dev/zero", "line 1 is longer than"), ("/dev/urandom", "not UTF-8")])
def test_endless_devices_fail_fast_in_one_line(dev, expect):
    from eft_local.batch.prompt_file import read_prompt_file

    with pytest.raises(UserError, match=expect):
        read_prompt_file(dev)


def test_size_and_line_limits(tmp_path):
    import io

    from eft_local.batch.prompt_file import read_text

    assert read_text(io.BytesIO(b"ab\ncd\n"), "f", max_bytes=6, max_line=2) == "ab\ncd\n"
    with pytest.raises(UserError, match="larger than"):
        read_text(io.BytesIO(b"ab\n" * 1000), "f", max_bytes=2000, max_line=2 << 20)
    with pytest.raises(UserError, match="line 3 is longer"):
        read_text(io.BytesIO(b"a\nb\n" + b"c" * 100 + b"\n"), "f", max_line=99)


def test_endless_stdin_is_bounded_too(tmp_path):
    import subprocess
    import sys

    with open("/dev/zero", "rb") as zero:
        r = subprocess.run(
            [sys.executable, "-m", "eft_local", "run", "--prompt-file", "-", "--base", "b", "--chat", "c", "--reference", "r"],
            stdin=zero,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2 and "longer than" in last_line(r.stderr)


# -- 16: nesting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [100, 100_000], ids=["deep", "past-the-recursion-limit"])
def test_deeply_nested_jsonl_names_the_line(tmp_path, depth, capsys):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * depth + "]" * depth + "}\n")
    rc = main(["run", "--prompt-file", str(pf), "--base", "b", "--chat", "c", "--reference", "r"])
    assert rc == 2
    line = last_line(capsys.readouterr().err)
    assert "line 2" in line and "nested" in line


@pytest.mark.parametrize(
    "value, where",
    [
        ("[" * 5000 + "]" * 5000, "line 5"),
        ("{ a = " * 3000 + "1" + " }" * 3000, "line 5"),
        ("[" * 40 + "]" * 40, "'profiles.p.defaults.stop'"),
    ],
    ids=["arrays", "inline-tables", "under-the-recursion-limit"],
)
def test_deeply_nested_models_toml_names_the_line_or_key(tmp_path, value, where):
    from eft_local.cli import main as cli_main

    f = tmp_path / "m.toml"
    files = "\n".join(f'{r} = {{ repo_id = "o/n", filename = "{r}.gguf" }}' for r in ("base", "chat", "reference"))
    f.write_text(f"[profiles.p]\n{files}\ndefaults.stop = {value}\n")
    with pytest.raises(UserError, match="nested deeper") as e:
        from eft_local.models.profiles import load_profiles

        load_profiles(f)
    assert where in str(e.value)
    assert cli_main(["models", "--models-file", str(f)]) == 2


# -- 15: a cap on grid points × prompts --------------------------------------------------------
def test_enormous_grid_is_refused_before_building_it(tmp_path, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("a\nb\n")
    axis = ",".join(str(i / 1000) for i in range(1000))
    grid = ["--grid", f"alpha={axis}", "--grid", f"beta={axis}", "--grid", f"temperature={axis}"]
    rc = main(["run", "--prompt-file", str(pf), *grid, "--base", str(pf), "--chat", str(pf), "--reference", str(pf)])
    assert rc == 2
    line = last_line(capsys.readouterr().err)
    assert "1000 × 1000 × 1000" in line and "rows" in line and "loading" not in line


def test_grid_cap_counts_prompts():
    from eft_local.batch.grid import MAX_ROWS, parse_grid

    assert len(parse_grid(["alpha=0,1"], {}, prompts=MAX_ROWS // 2)) == 2
    with pytest.raises(UserError, match="rows"):
        parse_grid(["alpha=0,1,2"], {}, prompts=MAX_ROWS // 2)


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
            "--base",
            str(family.base),
            "--chat",
            str(family.chat),
            "--reference",
            str(family.reference),
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
        "--base",
        str(family.base),
        "--chat",
        str(family.chat),
        "--reference",
        str(family.reference),
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
        r = cli(
            "run", "--prompt-file", str(pf), "--base", str(family.base), "--chat", str(family.chat),
            "--reference", str(family.reference), "--max-tokens", "2", stdout=full,
        )  # fmt: skip
    assert r.returncode == 2 and "disk full while writing standard output" in last_line(r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
