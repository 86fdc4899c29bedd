"""scripts/install.sh picks the llama.cpp build for the machine (checked with --dry-run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AVX2 = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
CPUINFO = "processor\t: 0\nflags\t\t: fpu sse sse2 {extra}\n"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or os.uname().sysname != "Linux", reason="Linux shell script")


def dry_run(tmp_path: Path, flags: str = "avx avx2 fma f16c", gpu: bool = False, shared: bool = False, **env: str) -> str:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=flags))
    fakebin = tmp_path / "bin"
    fakebin.mkdir(exist_ok=True)
    if gpu:
        smi = fakebin / "nvidia-smi"
        smi.write_text('#!/bin/sh\ncase "$1" in -L) echo "GPU 0: NVIDIA H100 (UUID: x)";; *) echo "9.0";; esac\n')
        nvcc = fakebin / "nvcc"
        nvcc.write_text("#!/bin/sh\necho fake nvcc\n")
        smi.chmod(0o755)
        nvcc.chmod(0o755)
    wheels = tmp_path / "wheels"
    if shared:
        (wheels / "avx2-rpc").mkdir(parents=True, exist_ok=True)
        (wheels / "avx2-rpc" / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"")
    full_env = {
        "PATH": f"{fakebin}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "EFT_CPUINFO": str(cpuinfo),
        "EFT_SHARED_WHEELS": str(wheels),
        **env,
    }
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), "--dry-run"], capture_output=True, text=True, env=full_env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def cmake_args(out: str) -> str:
    return out.split('CMAKE_ARGS="', 1)[1].split('"', 1)[0]


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="x86 flags")
def test_x86_cpu_flags_follow_the_cpu(tmp_path):
    assert cmake_args(dry_run(tmp_path)) == f"{AVX2} -DGGML_RPC=ON"
    assert cmake_args(dry_run(tmp_path, "avx avx2 fma f16c avx512f")) == f"{AVX2} -DGGML_AVX512=ON -DGGML_RPC=ON"
    old = cmake_args(dry_run(tmp_path, "avx"))
    assert "-DGGML_AVX2=OFF" in old and "-DGGML_AVX=ON" in old and "-DGGML_RPC=ON" in old
    assert "-DGGML_AVX=OFF" in cmake_args(dry_run(tmp_path, "sse4_2"))
    assert all("NATIVE=OFF" in cmake_args(dry_run(tmp_path, f)) for f in ("avx2 fma f16c", "avx", ""))


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="x86 flags")
def test_shared_portable_wheel_is_preferred(tmp_path):
    out = dry_run(tmp_path, "avx avx2 fma f16c avx512f", shared=True)
    assert cmake_args(out) == f"{AVX2} -DGGML_RPC=ON"  # the portable AVX2 + RPC build, not an AVX-512 compile
    assert "avx2-rpc/llama_cpp_python-0.3.36" in out
    assert "prebuilt" not in dry_run(tmp_path, "avx", shared=True)  # this CPU can't run it


def test_cuda_when_a_gpu_and_nvcc_are_present(tmp_path):
    args = cmake_args(dry_run(tmp_path, gpu=True))
    assert args == "-DGGML_CUDA=on -DGGML_RPC=ON -DCMAKE_CUDA_ARCHITECTURES=90"
    assert "backend cpu" in dry_run(tmp_path, gpu=True, EFT_BACKEND="cpu")


def test_no_gpu_means_cpu_even_with_a_cuda_toolkit(tmp_path):
    (tmp_path / "bin").mkdir()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert "backend cpu" in dry_run(tmp_path)


def test_cmake_args_override_keeps_rpc_on(tmp_path):
    assert cmake_args(dry_run(tmp_path, CMAKE_ARGS="-DGGML_VULKAN=on")) == "-DGGML_VULKAN=on -DGGML_RPC=ON"
    assert cmake_args(dry_run(tmp_path, CMAKE_ARGS="-DGGML_RPC=OFF")) == "-DGGML_RPC=OFF"


def test_ci_runs_the_two_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/install.sh" in ci and "scripts/test.sh" in ci
    readme = (ROOT / "README.md").read_text()
    assert "scripts/install.sh" in readme and "scripts/test.sh" in readme


# -- a build that compiles: progress while it runs --------------------------------------------
FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python3 and .venv/bin/python: `pip wheel` prints build steps like ninja, slowly.
case "$1" in
  -c) case "$2" in *llama_cpp*) echo yes ;; esac; exit 0 ;;
  -V) echo "Python 3.12.0"; exit 0 ;;
esac
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [ "$1 $2 $3" = "-m pip wheel" ]; then
  while [ $# -gt 0 ]; do [ "$1" = -w ] && out="$2"; shift; done
  echo "-- Configuring done"
  for i in 1 2 3 4; do sleep "${FAKE_STEP_SECONDS:-1}"; echo "[$((i * 20))/80] Building C object ggml-$i.c.o"; done
  [ -n "${FAKE_BUILD_FAILS:-}" ] && { echo "error: no C compiler"; exit 1; }
  touch "$out/llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl"; exit 0
fi
[ "$1 $2 $3" = "-m pip install" ] && echo "$* PYTHONWARNINGS=${PYTHONWARNINGS:-}" >>"${FAKE_PIP_LOG:-/dev/null}"
exit 0  # pip install: nothing to do
"""


def fake_install(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """install.sh in a copy of the repo layout, with a fake Python whose build takes ~4 s."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", repo / "scripts" / "install.sh")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra="avx avx2 fma f16c"))
    full_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHON": str(python),
        "EFT_CPUINFO": str(cpuinfo),
        "EFT_SHARED_WHEELS": str(tmp_path / "none"),
        "EFT_BACKEND": "cpu",
        "EFT_PROGRESS_SECONDS": "1",
        **env,
    }
    return subprocess.run(
        ["bash", str(repo / "scripts" / "install.sh")], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_build_says_the_expected_time_and_shows_progress(tmp_path):
    idle = tmp_path / "loadavg"
    idle.write_text("0.10 0.20 0.30 1/100 12345\n")
    r = fake_install(tmp_path, EFT_LOADAVG=str(idle))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "expect about" in out and "minutes on idle cores" in out  # the estimate says what it assumes
    assert "busy" not in out
    progress = [line for line in out.splitlines() if "still compiling" in line]
    assert len(progress) >= 2 and "% (step" in progress[-1] and "s so far" in progress[-1]
    # re-estimated from the measured pace once a step is known (the fake's steps are 25 % each)
    assert any("min left at this pace" in line for line in progress if "% (step" in line)
    assert "compiled in" in out and "done: llama.cpp for cpu" in out
    assert "Building C object" not in out  # the build's own chatter stays in the log
    assert "[80/80]" in next((tmp_path / ".cache" / "eft-local" / "wheelhouse").glob("*/build.log")).read_text()


def test_failed_build_shows_the_end_of_its_log(tmp_path):
    r = fake_install(tmp_path, FAKE_BUILD_FAILS="1", FAKE_STEP_SECONDS="0")
    assert r.returncode == 1
    assert "| error: no C compiler" in r.stderr and "building llama-cpp-python failed" in r.stderr


def test_a_busy_machine_is_told_the_build_takes_longer(tmp_path):
    busy = tmp_path / "loadavg"
    busy.write_text("3.42 2.10 1.00 5/300 12345\n")
    r = fake_install(tmp_path, EFT_LOADAVG=str(busy), FAKE_STEP_SECONDS="0")
    assert r.returncode == 0, r.stderr
    assert "this machine is busy (load 3.42" in r.stdout and "the progress lines re-estimate" in r.stdout


def test_the_editable_install_filters_only_setuptools_information_block(tmp_path):
    """setuptools' "Editable installation. !! ..." BuildBackendWarning is information only (install.sh says why)."""
    log = tmp_path / "pip.log"
    r = fake_install(tmp_path, FAKE_STEP_SECONDS="0", FAKE_PIP_LOG=str(log))
    assert r.returncode == 0, r.stderr
    editable = [line for line in log.read_text().splitlines() if " -e ." in line]
    assert editable and all(line.endswith("PYTHONWARNINGS=ignore:Editable installation") for line in editable)
