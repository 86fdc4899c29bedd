"""Numbers no float can hold, from every source of a setting (schema, flags, grids, profile defaults, rows)."""

from __future__ import annotations

import json

import pytest

from eft_local.cli import main
from eft_local.errors import UserError
from eft_local.settings import check, check_weight

HUGE = 10**400  # an integer no float can hold


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
