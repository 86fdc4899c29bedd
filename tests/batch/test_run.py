"""The batch-mode contract of `eft-local run`, driven through the real command line."""

from __future__ import annotations

import json

import pytest

from eft_local.cli import main
from tests.conftest import role_args, run_cli

FIELDS = {
    "id",
    "prompt",
    "text",
    "token_ids",
    "prompt_token_ids",
    "finish_reason",
    "n_tokens",
    "alpha",
    "beta",
    "weights",
    "seconds",
    "tokens_per_second",
    "drafted",
    "accepted",
}


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(capsys_or_stderr: str) -> str:
    lines = [line for line in capsys_or_stderr.strip().splitlines() if line.strip()]
    assert lines, "expected an error line"
    assert "Traceback" not in capsys_or_stderr
    return lines[-1]


def test_txt_prompts_to_jsonl(tmp_path, models, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("hello world\n\nthe answer is\nyou and I\n")
    out = tmp_path / "out.jsonl"
    rc = main(["run", "--prompt-file", str(pf), "--output", str(out), *models, "--seed", "3", "--max-tokens", "12"])
    assert rc == 0
    got = rows(out)
    assert [r["prompt"] for r in got] == ["hello world", "the answer is", "you and I"]
    assert [r["id"] for r in got] == [0, 1, 2]
    for r in got:
        assert set(r) == FIELDS
        assert r["finish_reason"] in ("stop", "length")
        assert r["n_tokens"] == len(r["token_ids"]) <= 12
        assert r["prompt_token_ids"] and r["seconds"] > 0 and r["tokens_per_second"] > 0
        assert 0 <= r["accepted"] <= r["drafted"]
    err = capsys.readouterr().err
    assert "3 prompts" in err and "tok/s" in err and "acceptance" in err
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_jsonl_ids_messages_and_stdout(tmp_path, models, capsys):
    pf = tmp_path / "p.jsonl"
    pf.write_text(
        json.dumps({"id": "a", "prompt": "hello"})
        + "\n"
        + json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
        + "\n"
        + json.dumps({"id": 7, "prompt": "yes"})
        + "\n"
    )
    assert main(["run", "--prompt-file", str(pf), *models, "--temperature", "0", "--max-tokens", "6"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in got] == ["a", 1, 7]
    assert got[1]["prompt"][1]["content"] == "hi"
    assert all(r["n_tokens"] >= 1 for r in got)


def test_seed_makes_reruns_identical_and_prompts_independent(tmp_path, models):
    def run(lines, seed):
        pf = tmp_path / "p.txt"
        pf.write_text("\n".join(lines) + "\n")
        out = tmp_path / "o.jsonl"
        assert (
            main(
                [
                    "run",
                    "--prompt-file",
                    str(pf),
                    "--output",
                    str(out),
                    *models,
                    "--seed",
                    str(seed),
                    "--temperature",
                    "1.0",
                    "--max-tokens",
                    "16",
                ]
            )
            == 0
        )
        return rows(out)

    a = run(["hello world", "the answer is"], 5)
    b = run(["hello world", "the answer is"], 5)
    c = run(["you and I were there", "the answer is"], 5)
    d = run(["hello world", "the answer is"], 6)
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert a[1]["token_ids"] == c[1]["token_ids"]  # prompt 1 doesn't depend on prompt 0
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in d]


def test_naive_and_speculative_agree_greedy(tmp_path, models):
    pf = tmp_path / "p.txt"
    pf.write_text("hello world\nthe answer is\n")
    outs = []
    for k in ("0", "4"):
        out = tmp_path / f"o{k}.jsonl"
        assert (
            main(
                [
                    "run",
                    "--prompt-file",
                    str(pf),
                    "--output",
                    str(out),
                    *models,
                    "--temperature",
                    "0",
                    "--max-tokens",
                    "20",
                    "--draft-tokens",
                    k,
                ]
            )
            == 0
        )
        outs.append(rows(out))
    assert [r["text"] for r in outs[0]] == [r["text"] for r in outs[1]]
    assert all(r["drafted"] == 0 for r in outs[0]) and any(r["drafted"] > 0 for r in outs[1])


def test_bad_prompt_among_good_ones_is_an_error_row(tmp_path, models):
    pf = tmp_path / "p.jsonl"
    pf.write_text(
        json.dumps({"prompt": "hello"})
        + "\n"
        + json.dumps({"prompt": "hello " * 400})
        + "\n"
        + json.dumps({"nothing": 1})
        + "\n"
        + json.dumps({"prompt": "yes"})
        + "\n"
    )
    out = tmp_path / "o.jsonl"
    assert main(["run", "--prompt-file", str(pf), "--output", str(out), *models, "--n-ctx", "256", "--max-tokens", "5"]) == 0
    got = rows(out)
    assert [r["finish_reason"] for r in got] == ["length", "error", "error", "length"]
    assert "n_ctx" in got[1]["error"] and "prompt" in got[2]["error"]
    assert "error" not in got[0]


@pytest.mark.parametrize(
    "content,name,expect",
    [
        ("", "p.txt", "no prompts"),
        ("\n \n", "p.txt", "no prompts"),
        ('{"prompt": "ok"}\n{not json\n', "p.jsonl", "line 2"),
        ('["a list"]\n', "p.jsonl", "JSON object"),
        ("hello", "p.csv", ".txt"),
    ],
)
def test_bad_prompt_files_fail_in_one_line_and_write_nothing(tmp_path, models, capsys, content, name, expect):
    pf = tmp_path / name
    pf.write_text(content)
    out = tmp_path / "o.jsonl"
    rc = main(["run", "--prompt-file", str(pf), "--output", str(out), *models])
    assert rc != 0
    assert expect in one_line_error(capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "o.jsonl.partial").exists()


def test_model_problems_fail_in_one_line(tmp_path, family, foreign_model, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    notgguf = tmp_path / "model.gguf"
    notgguf.write_text("hello")
    cases = [
        (["--base", str(tmp_path / "missing.gguf")], "not found"),
        (["--base", str(notgguf)], "not a GGUF"),
        (["--reference", str(foreign_model)], "foreign.gguf"),
    ]
    for override, expect in cases:
        paths = {"--base": str(family.base), "--chat": str(family.chat), "--reference": str(family.reference)}
        paths[override[0]] = override[1]
        args = [x for kv in paths.items() for x in kv]
        out = tmp_path / "o.jsonl"
        out.write_text("previous results\n")
        rc = main(["run", "--prompt-file", str(pf), "--output", str(out), *args])
        assert rc != 0
        assert expect in one_line_error(capsys.readouterr().err)
        assert out.read_text() == "previous results\n"  # nothing of the user's lost


def test_subprocess_errors_have_no_traceback(tmp_path, family):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    res = run_cli("run", "--prompt-file", str(pf), "--profile", "no-such-profile", "--models-dir", str(tmp_path))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "no-such-profile" in one_line_error(res.stderr)
    res = run_cli("run", "--prompt-file", str(tmp_path / "absent.txt"), "--base", str(family.base))
    assert res.returncode != 0 and "prompt file not found" in one_line_error(res.stderr)
    res = run_cli(
        "run",
        "--prompt-file",
        str(pf),
        "--temperature",
        "-1",
        *role_args(family, threads=None),
    )
    assert res.returncode != 0 and "temperature" in one_line_error(res.stderr)


def test_subprocess_run_end_to_end(tmp_path, family):
    pf = tmp_path / "p.txt"
    pf.write_text("hello world\n")
    out = tmp_path / "o.jsonl"
    res = run_cli(
        "run",
        "--prompt-file",
        str(pf),
        "--output",
        str(out),
        *role_args(family, threads=None),
        "--seed",
        "1",
        "--max-tokens",
        "8",
    )
    assert res.returncode == 0, res.stderr
    assert rows(out)[0]["n_tokens"] == 8
    assert "1 prompts, 8 tokens" in res.stderr


def test_chat_model_without_template_needs_raw(tmp_path, family, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    args = [
        "run",
        "--prompt-file",
        str(pf),
        "--base",
        str(family.base),
        "--chat",
        str(family.reference),
        "--reference",
        str(family.reference),
        "--threads",
        "1",
        "--max-tokens",
        "4",
    ]
    assert main(args) != 0
    assert "--raw" in one_line_error(capsys.readouterr().err)
    out = tmp_path / "o.jsonl"
    assert main([*args, "--raw", "--output", str(out)]) == 0
    row = rows(out)[0]
    assert row["n_tokens"] == 4 and row["prompt_token_ids"][0] == 1  # BOS added for raw text


def test_llama_failure_on_one_prompt_is_an_error_row(tmp_path, models, monkeypatch):
    from eft_local.llama.adapter import LlamaModel

    real_decode = LlamaModel._decode
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("llama_decode failed (1) on base.gguf")
        return real_decode(self, batch)

    monkeypatch.setattr(LlamaModel, "_decode", flaky)
    pf = tmp_path / "p.txt"
    pf.write_text("hello\nyes\n")
    out = tmp_path / "o.jsonl"
    assert (
        main(
            [
                "run",
                "--prompt-file",
                str(pf),
                "--output",
                str(out),
                *models,
                "--temperature",
                "0",
                "--max-tokens",
                "6",
                "--parallel",
                "1",
            ]
        )
        == 0
    )
    got = rows(out)
    assert got[0]["finish_reason"] == "error" and "llama_decode" in got[0]["error"]
    assert got[1]["finish_reason"] == "length" and got[1]["n_tokens"] == 6
