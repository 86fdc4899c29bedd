"""scripts/download_models.py in a Python without the download's package: one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "download_models.py"


def run_without(module: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    """The script as `python scripts/download_models.py ARGS` in a Python where ``module`` is missing."""
    code = (
        f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_without_huggingface_hub_one_line_says_what_to_install(tmp_path):
    r = run_without("huggingface_hub", "--models-dir", str(tmp_path / "models"), tmp_path=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'huggingface_hub'" in r.stderr and "pip install huggingface_hub" in r.stderr
    assert ".venv/bin/eft-local download" in r.stderr
    assert not (tmp_path / "models").exists()


def test_help_needs_no_download_package(tmp_path):
    r = run_without("huggingface_hub", "--help", tmp_path=tmp_path)
    assert r.returncode == 0 and "--models-dir" in r.stdout
