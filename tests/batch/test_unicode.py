"""Text that isn't valid Unicode in `run` and `score` (issue 23 item 9, the batch part): a row
holding a lone surrogate (``"\\ud800"`` in JSON) or bytes that aren't UTF-8 anywhere (prompt,
message, id, weight name, stop, continuation, a key) is an error row naming the field, and every
other row is written; a chat template whose output isn't Unicode is an error row; a text flag
(``--system``, ``--stop``) is exit 2 with one line. Before: `unexpected UnicodeEncodeError`,
exit 1 and zero rows written (and a file with one such byte was refused as a whole)."""

from __future__ import annotations

import io
import json

import pytest

from eft_local.cli import main
from eft_local.llama.synthetic import CHATML_TEMPLATE, write_family
from tests.conftest import role_args, run_cli

LONE = b"\\ud800"  # as it travels in JSON
GOOD = b'{"id": "good", "prompt": "hello"}'
BYTE = b"\xff".decode("utf-8", "surrogateescape")  # how Python sees a byte that isn't UTF-8 in argv

RUN_ROWS = [  # (a JSONL row as bytes, the field the error names)
    (b'{"id": "p", "prompt": "a' + LONE + b'"}', "prompt"),
    (b'{"id": "p", "prompt": "a\xffb"}', "prompt"),
    (b'{"id": "p' + LONE + b'", "prompt": "a"}', "id"),
    (b'{"id": "p\xfe", "prompt": "a"}', "id"),
    (b'{"id": "p", "messages": [{"role": "user", "content": "' + LONE + b'"}]}', "messages[0].content"),
    (b'{"id": "p", "messages": [{"role": "user", "content": "\xc3("}]}', "messages[0].content"),
    (b'{"id": "p", "messages": [{"role": "user\xff", "content": "a"}]}', "messages[0].role"),
    (b'{"id": "p", "prompt": "a", "weights": {"d' + LONE + b'": 1}}', "weights.d\\ud800"),
    (b'{"id": "p", "prompt": "a", "weights": {"d\xff": 1}}', "weights.d\\udcff"),
    (b'{"id": "p", "prompt": "a", "stop": ["ok", "' + LONE + b'"]}', "stop[1]"),
    (b'{"id": "p", "prompt": "a", "x' + LONE + b'": 1}', "x\\ud800"),
    (b'{"id": "p", "prompt": "a\xed\xa0\x80"}', "prompt"),  # a surrogate encoded as UTF-8 (CESU)
]


def rows_of(path) -> list[dict]:
    raw = path.read_bytes()
    raw.decode("utf-8")  # every line is UTF-8 ...
    return [json.loads(line) for line in raw.decode().splitlines()]  # ... and strict JSON


def run_rows(tmp_path, models, content: bytes, *extra: str, name: str = "p.jsonl") -> tuple[int, list[dict], str]:
    pf = tmp_path / name
    pf.write_bytes(content)
    out = tmp_path / "out.jsonl"
    rc = main(["run", "--prompt-file", str(pf), "--output", str(out), *models, "--max-tokens", "2", *extra])
    return rc, rows_of(out), str(pf)


@pytest.mark.parametrize("row, field", RUN_ROWS)
def test_run_a_bad_row_is_an_error_row_and_the_others_are_written(tmp_path, models, capsys, row, field):
    rc, got, _ = run_rows(tmp_path, models, GOOD + b"\n" + row + b"\n" + GOOD + b"\n")
    assert rc == 0 and [r["finish_reason"] for r in got] == ["length", "error", "length"]
    assert got[1]["error"].startswith(f"line 2: {field} is not valid Unicode: ")
    assert "Traceback" not in capsys.readouterr().err


def test_run_echoes_a_bad_row_with_replacement_characters(tmp_path, models):
    _, got, _ = run_rows(tmp_path, models, b'{"id": "i' + LONE + b'", "prompt": "a\xffb"}\n' + GOOD + b"\n")
    assert got[0]["id"] == "i\ufffd" and got[0]["prompt"] == "a\ufffdb"
    assert got[0]["error"] == "line 1: id is not valid Unicode: a lone surrogate U+D800, at character 2"


def test_run_txt_line_with_bytes_that_are_not_utf8(tmp_path, models):
    _, got, _ = run_rows(tmp_path, models, b"hello\nbad \xff byte\n\nok\n", name="p.txt")
    assert [r["finish_reason"] for r in got] == ["length", "error", "length"] and [r["id"] for r in got] == [0, 1, 2]
    assert got[1]["error"] == "line 2: the prompt is not valid Unicode: the byte 0xff, which is not UTF-8, at character 5"


def test_run_every_row_bad_is_exit_1_with_the_rows_written(tmp_path, models):
    rc, got, _ = run_rows(tmp_path, models, b"\xff\n\xfe\n", name="p.txt")
    assert rc == 1 and len(got) == 2 and all(r["finish_reason"] == "error" for r in got)


def test_run_parallel_and_grid_keep_the_error_in_its_rows(tmp_path, models):
    content = GOOD + b"\n" + RUN_ROWS[0][0] + b"\n" + GOOD + b"\n"
    rc, got, _ = run_rows(tmp_path, models, content, "--parallel", "2", "--grid", "beta=0.5,1")
    assert rc == 0 and [r["finish_reason"] for r in got] == ["length"] * 2 + ["error"] * 2 + ["length"] * 2


def test_run_from_standard_input(tmp_path, models, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\n")))
    assert main(["run", "--prompt-file", "-", *models, "--max-tokens", "2"]) == 0
    assert [json.loads(line)["finish_reason"] for line in capsys.readouterr().out.splitlines()] == ["length", "error"]


def test_a_binary_file_is_still_refused_as_a_whole(tmp_path, models, capsys):
    pf = tmp_path / "p.txt"
    pf.write_bytes("hello\nworld\n".encode("utf-16"))
    assert main(["run", "--prompt-file", str(pf), *models]) == 2
    assert "prompt file is not UTF-8 text" in capsys.readouterr().err


BAD_ON_DEMAND = "{% if messages[-1]['content'] == 'BAD' %}{{ 'x\\ud800' }}{% endif %}" + CHATML_TEMPLATE


def test_a_template_whose_output_is_not_unicode_is_an_error_row(tmp_path):
    family = write_family(tmp_path / "fam", chat_template=BAD_ON_DEMAND)
    content = b'{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "BAD"}]}\n{"prompt": "ok"}\n'
    _, got, _ = run_rows(tmp_path, role_args(family), content)
    assert [r["finish_reason"] for r in got] == ["length", "error", "length"]
    assert "chat template of chat.gguf failed: its output is not valid Unicode" in got[1]["error"]


def test_score_a_template_whose_output_is_not_unicode_is_an_error_row(tmp_path):
    family = write_family(tmp_path / "fam", chat_template=BAD_ON_DEMAND)
    pf = tmp_path / "s.jsonl"
    pf.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "continuation": "b"}\n'
        '{"messages": [{"role": "user", "content": "BAD"}], "continuation": "b"}\n'
    )
    out = tmp_path / "out.jsonl"
    assert main(["score", "--prompt-file", str(pf), "--output", str(out), *role_args(family)]) == 0
    got = rows_of(out)
    assert "error" not in got[0] and "its output is not valid Unicode" in got[1]["error"]


@pytest.mark.parametrize("command", ["run", "score"])
@pytest.mark.parametrize("flags", [["--system", BYTE], ["--system", "a\ud800"], ["--stop", f"x{BYTE}"], ["--stop", "\udfff"]])
def test_text_flags_that_are_not_unicode_exit_2_with_one_line(tmp_path, models, capsys, command, flags):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "a", "continuation": "b"}\n')
    assert main([command, "--prompt-file", str(pf), *models, *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{flags[0]} is not valid Unicode" in lines[0]


def test_a_byte_that_is_not_utf8_in_argv_as_a_user_types_it(tmp_path, family):
    pf = tmp_path / "p.txt"
    pf.write_text("a\n")
    r = run_cli("run", "--prompt-file", str(pf), *role_args(family), "--system", BYTE)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--system is not valid Unicode: the byte 0xff" in lines[0], r.stderr


@pytest.mark.parametrize(
    "row, field",
    [
        (b'{"prompt": "a", "continuations": ["b", "c' + LONE + b'"]}', "continuations[1]"),
        (b'{"prompt": "a", "continuation": "\xff"}', "continuation"),
        (b'{"prompt": "a\xff", "continuation": "b"}', "prompt"),
        (b'{"id": "' + LONE + b'", "prompt": "a", "continuation": "b"}', "id"),
        (b'{"messages": [{"role": "user", "content": "\xff"}], "continuation": "b"}', "messages[0].content"),
        (b'{"prompt": "a", "continuation": "b", "weights": {"\xff": 1}}', "weights.\\udcff"),
    ],
)
def test_score_a_bad_row_is_an_error_row_and_the_others_are_written(tmp_path, models, row, field):
    good = b'{"prompt": "a", "continuation": "b"}\n'
    pf = tmp_path / "s.jsonl"
    pf.write_bytes(good + row + b"\n" + good)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--prompt-file", str(pf), "--output", str(out), *models]) == 0
    got = rows_of(out)
    assert ["error" in r for r in got] == [False, True, False]
    assert got[1]["error"].startswith(f"line 2: {field} is not valid Unicode: ")
