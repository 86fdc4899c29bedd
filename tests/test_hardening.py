"""Hostile but realistic input (issue 11): no abort, no lost or replaced file, one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eft_local.llama.adapter import LlamaModel

from .conftest import run_cli


def models(family) -> list[str]:
    return ["--base", str(family.base), "--chat", str(family.chat), "--reference", str(family.reference), "--threads", "1"]


def rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- small --n-ctx: never a batch larger than llama.cpp's n_batch (GGML_ASSERT, exit 134) --------
def test_adapter_reads_back_batch_and_context_sizes(family):
    m = LlamaModel(family.chat, n_ctx=64, n_threads=1)
    try:
        assert m.n_ctx >= 64 and m.n_batch <= 64  # llama.cpp pads n_ctx and clamps n_batch to what was asked
        assert m._batch is not None
    finally:
        m.close()


@pytest.mark.parametrize("n_ctx", [16, 17, 100])
def test_long_eval_with_many_logit_rows_under_a_small_batch(family, n_ctx):
    """166 tokens, 70 logit rows, n_batch <= 100: chunked, rows gathered, same logits as one big batch."""
    small = LlamaModel(family.chat, n_ctx=n_ctx, n_threads=1)
    big = LlamaModel(family.chat, n_ctx=512, n_threads=1)
    try:
        ids = [10 + (i * 7) % 400 for i in range(166)]
        got = np.array(small.eval(ids, 70))
        want = np.array(big.eval(ids, 70))
        assert got.shape == want.shape == (70, small.n_vocab)
        np.testing.assert_allclose(got, want, atol=0.05)  # chunk shapes round differently
        assert (got.argmax(1) == want.argmax(1)).mean() > 0.95
        assert small.n_past == 166
    finally:
        small.close()
        big.close()


@pytest.mark.parametrize("n_ctx,draft", [("16", "64"), ("64", "8"), ("128", "0"), ("128", None)])
def test_small_n_ctx_never_aborts(family, tmp_path, n_ctx, draft):
    prompt = tmp_path / "p.txt"
    prompt.write_text("the " * 40 + "\n" + "hello world\n")  # ~166 tokens with the template, and a short one
    args = ["run", "--prompt-file", str(prompt), *models(family), "--n-ctx", n_ctx, "--max-tokens", "30", "--seed", "1"]
    if draft is not None:
        args += ["--draft-tokens", draft]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "GGML_ASSERT" not in r.stderr and "Traceback" not in r.stderr
    out = rows(r.stdout)
    assert len(out) == 2 and all(row["finish_reason"] in ("stop", "length") for row in out)
    assert len(out[0]["prompt_token_ids"]) > int(n_ctx) // 2


def test_prompt_longer_than_the_context_is_an_error_row(family, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("the " * 200 + "\nhello\n")
    r = run_cli("run", "--prompt-file", str(prompt), *models(family), "--n-ctx", "128", "--max-tokens", "4")
    assert "GGML_ASSERT" not in r.stderr and "Traceback" not in r.stderr
    out = rows(r.stdout)
    assert out[0]["finish_reason"] == "error" and "n_ctx" in out[0]["error"]
    assert out[1]["finish_reason"] in ("stop", "length")


# -- --output: regular files get partial-then-rename; nothing else is ever replaced -------------
from eft_local.batch.output import check_output, open_output  # noqa: E402
from eft_local.errors import UserError  # noqa: E402


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
        r = run_cli("run", "--prompt-file", str(prompt), "--output", out, *models(family))
        assert r.returncode == 2, r.stderr
        assert "loading" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert prompt.read_text() == "hello\n"


def test_cli_output_through_a_symlink_and_to_dev_null(family, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello\n")
    real = tmp_path / "real.jsonl"
    (tmp_path / "link.jsonl").symlink_to(real)
    r = run_cli(
        "run", "--prompt-file", str(prompt), "--output", str(tmp_path / "link.jsonl"), *models(family), "--max-tokens", "3"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.jsonl").is_symlink() and len(rows(real.read_text())) == 1
    r = run_cli("run", "--prompt-file", str(prompt), "--output", "/dev/null", *models(family), "--max-tokens", "3")
    assert r.returncode == 0, r.stderr


# -- exit status: every row failed -> non-zero, rows still written ------------------------------
def test_every_row_failed_exits_non_zero_and_says_how_many(family, tmp_path):
    prompt = tmp_path / "p.jsonl"
    prompt.write_text('{"prompt": ""}\n{"messages": []}\n')
    out = tmp_path / "o.jsonl"
    r = run_cli("run", "--prompt-file", str(prompt), "--output", str(out), *models(family))
    assert r.returncode == 1, r.stderr
    assert len(rows(out.read_text())) == 2
    assert "2 error row(s)" in r.stderr.strip().splitlines()[-1]
    prompt.write_text('{"prompt": ""}\n{"prompt": "hello"}\n')
    r = run_cli("run", "--prompt-file", str(prompt), "--output", str(out), *models(family), "--max-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "1 error row(s) (first: line 1" in r.stderr.strip().splitlines()[-1]


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
            [sys.executable, "-m", "eft_local", "run", "--prompt-file", "-", *models(family), "--max-tokens", "3"],
            input=data.encode(),
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert [row["id"] for row in rows(r.stdout.decode())] == want
    r = subprocess.run(
        [sys.executable, "-m", "eft_local", "run", "--prompt-file", "-", *models(family)],
        input=b"",
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 2 and b"no prompts" in r.stderr


# -- chat templates that render enormous prompts --------------------------------------------------
from types import SimpleNamespace  # noqa: E402

from eft_local.llama.prompts import render_chat  # noqa: E402


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ 1000 * ['x'] * 10000000 }}",
        "{{ 2 ** 100000000 }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ],
)
def test_enormous_template_output_is_refused(template):
    model = SimpleNamespace(path="m.gguf", chat_template=template, bos=-1, eos=-1, add_bos=False, token_text=lambda i: b"")
    with pytest.raises(UserError, match="chat template of m.gguf"):
        render_chat(model, [{"role": "user", "content": "hi"}])


def test_normal_template_with_a_long_message_still_renders():
    model = SimpleNamespace(
        path="m.gguf",
        chat_template="{% for m in messages %}[{{ m.content }}]{% endfor %}",
        bos=-1,
        eos=-1,
        add_bos=False,
        token_text=lambda i: b"",
    )
    text = "y" * 3_000_000
    assert render_chat(model, [{"role": "user", "content": text}]) == f"[{text}]"
