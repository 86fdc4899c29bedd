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
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_jsonl_names_the_line(tmp_path, depth, capsys):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * depth + "]" * depth + "}\n")
    rc = main(["run", "--prompt-file", str(pf), "--base", "b", "--chat", "c", "--reference", "r"])
    assert rc == 2
    line = last_line(capsys.readouterr().err)
    assert "line 2" in line and "nested" in line
