"""The cap on grid points × prompts, checked before the grid is built."""

from __future__ import annotations

import pytest

from eft_local.cli import main
from eft_local.errors import UserError


def last_line(err: str) -> str:
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.strip()][-1]


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


@pytest.mark.parametrize("command, rows", [("run", "a\nb\n"), ("score", '{"prompt": "a", "continuation": "b"}\n' * 2)])
def test_every_command_with_a_grid_has_the_one_cap(command, rows, tmp_path, capsys):
    """Issue 23 #10: `score` had no cap (1000 × 1000 points × 2 rows started loading models)."""
    pf = tmp_path / ("p.txt" if command == "run" else "p.jsonl")
    pf.write_text(rows)
    axis = ",".join(str(i / 1000) for i in range(1000))
    models = ["--base", str(pf), "--chat", str(pf), "--reference", str(pf)]
    assert main([command, "--prompt-file", str(pf), "--grid", f"alpha={axis}", "--grid", f"beta={axis}", *models]) == 2
    line = last_line(capsys.readouterr().err)
    assert "1000 × 1000 = 1,000,000 points × 2 prompt(s) = 2,000,000 rows" in line and "loading" not in line


def test_every_grid_caller_passes_its_rows():
    """The cap can't be skipped by leaving the row count out (the default was 1)."""
    from eft_local.batch.grid import parse_grid

    with pytest.raises(TypeError):
        parse_grid(["alpha=0,1"], {})


def test_the_cap_comes_before_any_value_is_parsed():
    """An axis of a million bad values fails on its size, not after checking each value."""
    from eft_local.batch.grid import MAX_ROWS, parse_grid

    with pytest.raises(UserError, match="rows"):
        parse_grid(["alpha=" + ",".join(["x"] * (MAX_ROWS + 1))], {}, prompts=1)


def test_grid_cap_counts_prompts():
    from eft_local.batch.grid import MAX_ROWS, parse_grid

    assert len(parse_grid(["alpha=0,1"], {}, prompts=MAX_ROWS // 2)) == 2
    with pytest.raises(UserError, match="rows"):
        parse_grid(["alpha=0,1,2"], {}, prompts=MAX_ROWS // 2)
