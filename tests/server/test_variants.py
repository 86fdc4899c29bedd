"""Named variants (issue 16 §2): ``--variant NAME:KEY=V,...`` and a profile's ``variants`` table;
one `eft-local serve` lists them as models and answers each with its own settings."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from eft_local.errors import UserError
from eft_local.models.profiles import load_profiles
from eft_local.settings import parse_variant

PROFILE = """
[profiles.tiny]
base = {{ repo_id = "org/Big-GGUF", filename = "big.gguf" }}
chat = {{ repo_id = "org/Chat-GGUF", filename = "chat.gguf" }}
reference = {{ repo_id = "org/Ref-GGUF", filename = "ref.gguf" }}
[profiles.tiny.defaults]
alpha = 0.8
[profiles.tiny.variants]
{variants}
"""


def test_parse_variant_keys_as_in_grid():
    assert parse_variant("beta-1.5:beta=1.5") == ("beta-1.5", {"beta": 1.5})
    name, layer = parse_variant("mix:alpha=0.5, weight.safe=-0.25,temperature=0,seed=3")
    assert name == "mix" and layer == {"alpha": 0.5, "weights": {"safe": -0.25}, "temperature": 0.0, "seed": 3}
    assert parse_variant("c:weight.chat=2") == ("c", {"alpha": 2.0})


@pytest.mark.parametrize(
    "text,needle",
    [
        ("nobody", "expected NAME:KEY=V"),
        ("x:beta", "is not KEY=V"),
        ("x:beta=hot", "--variant x.beta must be a number"),
        ("x:beta=1e9", "--variant x.beta must be in"),
        ("x:colour=red", "unknown key 'colour'"),
        ("x:beta=1,beta=2", "beta given twice"),
        ("/x:beta=1", "variant name"),
        ("x:n_ctx=8", "unknown key 'n_ctx'"),
    ],
)
def test_bad_variants_are_one_line(text, needle):
    with pytest.raises(UserError, match=None) as e:
        parse_variant(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_profile_variants_are_checked(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(PROFILE.format(variants='"beta-1.5" = { beta = 1.5 }\nsafe = { "weight.safe" = 0.5 }'))
    profile = load_profiles(good)["tiny"]
    assert profile.defaults["variants"] == {"beta-1.5": {"beta": 1.5}, "safe": {"weights": {"safe": 0.5}}}
    bad = tmp_path / "bad.toml"
    bad.write_text(PROFILE.format(variants='"b" = { beta = "x" }'))
    with pytest.raises(UserError, match=r"variants\.b\.beta must be a number"):
        load_profiles(bad)


def test_serve_lists_and_answers_every_variant(family, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(PROFILE.format(variants='"beta-1.5" = { beta = 1.5 }'))
    p = family.paths()
    cmd = [sys.executable, "-m", "eft_local", "serve", "--profile", "tiny", "--models-file", str(models)]
    cmd += ["--base", str(p["base"]), "--chat", str(p["chat"]), "--reference", str(p["reference"])]
    cmd += ["--variant", "greedy-b0:beta=0,temperature=0", "--port", "0", "--threads", "1", "--n-ctx", "256"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        for line in proc.stderr:
            if "serving" in line:
                break
        port = line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0]
        url = f"http://127.0.0.1:{port}"
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny", "beta-1.5", "greedy-b0"]

        def echo(**body) -> list[float]:
            r = httpx.post(
                url + "/v1/completions", json={"prompt": "hello", "echo": True, "max_tokens": 0, "logprobs": 0, **body}
            )
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["logprobs"]["token_logprobs"]

        assert echo(model="beta-1.5") == echo(beta=1.5) != echo()  # the profile's alpha 0.8 under both
        assert echo(model="greedy-b0") == echo(beta=0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    clash = subprocess.run([*cmd[:-6], "--variant", "tiny:beta=2"], capture_output=True, text=True, timeout=60)
    assert clash.returncode == 2 and "name the variant differently" in clash.stderr
