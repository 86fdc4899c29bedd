"""Every flag of `run` and `score` holding text that isn't valid Unicode (a byte that isn't UTF-8,
as Python decodes argv: U+DC80..U+DCFF; or a lone surrogate from a library caller) exits 2 with
one line before anything loads (issue 23 item 9). Before: `--system`/`--rpc HOST` ended with
`unexpected UnicodeEncodeError/UnicodeError`, exit 1; `--stop` was accepted and never matched."""

from __future__ import annotations

import pytest

from eft_local.cli import main

BYTE = b"\xff".decode("utf-8", "surrogateescape")

FLAGS = [
    ["--system", BYTE],
    ["--system", "a\ud800"],
    ["--stop", f"x{BYTE}"],
    ["--stop", "\udfff"],
    ["--weight", f"{BYTE}=1"],
    ["--weight", f"d=1{BYTE}"],
    ["--delta", f"d{BYTE}=x.gguf"],
    ["--delta-reference", f"d{BYTE}=x.gguf"],
    ["--grid", f"weight.{BYTE}=1"],
    ["--grid", f"{BYTE}=1"],
    ["--grid", f"alpha=1,{BYTE}"],
    ["--draft-with", BYTE],
    ["--alpha", f"1{BYTE}"],
    ["--prompt-style", BYTE],
    ["--top-p-mode", f"eft{BYTE}"],
]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "score"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: f[0] if isinstance(f, list) else f)
def test_a_text_flag_that_is_not_unicode_is_exit_2_and_one_line(tmp_path, models, capsys, command, flags):
    pf = tmp_path / "p.jsonl"
    pf.write_text('{"prompt": "a", "continuation": "b"}\n')
    try:
        rc = main([command, "--prompt-file", str(pf), "--output", str(tmp_path / "o.jsonl"), *models, *flags])
    except SystemExit as e:  # argparse's own refusals (choices)
        rc = e.code
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert flags[0] in line and "loading" not in line
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("host", [f"h{BYTE}", "a" * 64, "a..b"])
def test_an_rpc_host_idna_cannot_spell_is_one_line(tmp_path, models, capsys, host):
    """`socket.gethostbyname` raises UnicodeError, not OSError, for these."""
    from eft_local.llama.rpc import supports_rpc

    if not supports_rpc():
        pytest.skip("llama.cpp built without RPC")
    pf = tmp_path / "p.txt"
    pf.write_text("a\n")
    shown = host.encode("utf-8", "backslashreplace").decode()  # how the one line shows a byte that isn't UTF-8
    assert main(["run", "--prompt-file", str(pf), *models, "--rpc", f"base={host}:50052"]) == 2
    assert f"unknown host '{shown}'" in one_line(capsys.readouterr().err)
    assert main(["rpc-server", "--host", host, "--port", "50999"]) == 2
    assert f"--host {shown}: not an IPv4 address" in one_line(capsys.readouterr().err)
