"""Prompt files: BOM, pipes and stdin, line ends, size and nesting bounds."""

from __future__ import annotations

import json

import pytest

from eft_local.cli import main
from eft_local.errors import UserError
from tests.conftest import role_args


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def last_line(err: str) -> str:
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()][-1]


# -- prompt files: BOM, stdin --------------------------------------------------------------------
from eft_local.batch.prompt_file import read_prompt_file  # noqa: E402


@pytest.mark.parametrize(
    "name,content",
    [
        ("p.txt", "\ufeffhello\nworld\n"),
        ("p.jsonl", '\ufeff{"prompt": "hello"}\n{"prompt": "world"}\n'),
        ("p.txt", "\ufeffhello\r\nworld\r\n"),
    ],
)
def test_utf8_bom_is_dropped(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    items = read_prompt_file(path)
    assert [i.text for i in items] == ["hello", "world"]


def test_prompt_file_from_a_pipe_or_fifo(tmp_path):
    import os
    import threading

    fifo = tmp_path / "prompts"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('{"prompt": "a"}\n{"prompt": "b"}\n'))
    writer.start()
    items = read_prompt_file(fifo)
    writer.join(10)
    assert [i.text for i in items] == ["a", "b"]
    with pytest.raises(UserError, match="directory"):
        read_prompt_file(tmp_path)


def test_prompt_file_dash_reads_stdin(family, tmp_path):
    import subprocess
    import sys

    for data, want in (('{"id": "a", "prompt": "hello"}\n', ["a"]), ("\ufeffhello\nworld\n", [0, 1])):
        r = subprocess.run(
            [sys.executable, "-m", "eft_local", "run", "--prompt-file", "-", *role_args(family), "--max-tokens", "3"],
            input=data.encode(),
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert [row["id"] for row in rows(r.stdout.decode())] == want
    r = subprocess.run(
        [sys.executable, "-m", "eft_local", "run", "--prompt-file", "-", *role_args(family)],
        input=b"",
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 2 and b"no prompts" in r.stderr


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
