"""llama.cpp RPC: two loopback rpc-servers holding the synthetic base's layers.

Model runs go through subprocesses (``python -m eft_local``): RPC devices registered in a
process stay registered, and ggml's RPC client ends the process when a server dies mid-decode,
so the pytest process itself never connects to a server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from eft_local.cli import build_parser, main
from eft_local.cli.rpc import parse_rpc_spec, rpc_endpoints
from eft_local.errors import UserError
from eft_local.llama import rpc
from tests.conftest import ROOT, role_args, run_cli

needs_rpc = pytest.mark.skipif(not rpc.supports_rpc(), reason="llama-cpp-python built without -DGGML_RPC=ON")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eft_local", "rpc-server", "--host", host, "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"rpc-server exited: {proc.stderr.read()}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("rpc-server did not start listening")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture(scope="module")
def servers():
    if not rpc.supports_rpc():
        pytest.skip("llama-cpp-python built without -DGGML_RPC=ON")
    started = [start_server(), start_server()]
    yield [f"127.0.0.1:{port}" for _, port in started]
    for proc, _ in started:
        stop(proc)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("rpc") / "p.txt"
    path.write_text("hello world\nthe water is\n")
    return path


def model_args(family, prompts, *extra: str) -> list[str]:
    return [
        "run",
        "--prompt-file",
        str(prompts),
        *role_args(family, threads=None),
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--threads",
        "1",
        "--n-ctx",
        "256",
        *extra,
    ]


def tokens(result: subprocess.CompletedProcess) -> list[list[int]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["token_ids"] for line in result.stdout.splitlines()]


# -- flag syntax ------------------------------------------------------------------------------------
def test_rpc_flag_parses_roles_and_server_lists():
    args = build_parser().parse_args(
        ["run", "--prompt-file", "x", "--rpc", "base=10.0.0.5:50052,10.0.0.6:50053", "--rpc", "reference=host.lan:1"]
    )
    assert args.rpc == {"base": ["10.0.0.5:50052", "10.0.0.6:50053"], "reference": ["host.lan:1"]}
    assert build_parser().parse_args(["run", "--prompt-file", "x"]).rpc == {}
    if rpc.supports_rpc():
        assert rpc_endpoints(args) == {"base": ["10.0.0.5:50052", "10.0.0.6:50053"], "reference": ["host.lan:1"]}


@pytest.mark.parametrize(
    "value, message",
    [
        ("base", "expected ROLE=HOST:PORT"),
        ("base=", "expected ROLE=HOST:PORT"),
        ("=1.2.3.4:5", "expected ROLE=HOST:PORT"),
        ("1bass=1.2.3.4:5", "unknown role '1bass'"),
        ("base.x=1.2.3.4:5", "unknown role 'base.x'"),
        ("base=1.2.3.4", "expected HOST:PORT"),
        ("base=1.2.3.4:0", "port must be"),
        ("base=1.2.3.4:70000", "port must be"),
        ("base=1.2.3.4:http", "port must be"),
        ("base=1.2.3.4:5,", "empty server"),
    ],
)
def test_rpc_flag_errors_are_one_line(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--prompt-file", "x", "--rpc", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "--rpc" in err and err.count("\n") == 1


def test_profile_rpc_table(tmp_path):
    from eft_local.models.profiles import parse_models_file

    files = "\n".join(f'{r} = {{ repo_id = "a/b", filename = "{r}.gguf" }}' for r in ("base", "chat", "reference"))
    path = tmp_path / "m.toml"
    path.write_text(f'[profiles.p]\nrpc = {{ base = "10.0.0.5:50052", chat = ["a:1", "b:2"] }}\n{files}\n')
    profiles, _ = parse_models_file(path)
    assert profiles["p"].defaults["rpc"] == {"base": ["10.0.0.5:50052"], "chat": ["a:1", "b:2"]}
    path.write_text(f'[profiles.p]\nrpc = {{ bass = "10.0.0.5:50052" }}\n{files}\n')
    with pytest.raises(UserError, match="unknown role 'bass'"):
        parse_models_file(path)


def test_cli_rpc_overrides_profile_per_role():
    if not rpc.supports_rpc():
        pytest.skip("llama-cpp-python built without -DGGML_RPC=ON")
    args = build_parser().parse_args(["run", "--prompt-file", "x", "--rpc", "base=c:3", "--rpc", "base=d:4"])
    got = rpc_endpoints(args, {"rpc": {"base": ["a:1"], "reference": ["b:2"]}})
    assert got == {"base": ["c:3", "d:4"], "reference": ["b:2"]}
    assert parse_rpc_spec("chat=h:1") == ("chat", ["h:1"])


def test_without_rpc_build_one_line_naming_the_flag(monkeypatch, capsys):
    monkeypatch.setattr(rpc, "supports_rpc", lambda: False)
    assert main(["rpc-server", "--port", "50052"]) == 2
    err = capsys.readouterr().err
    assert "-DGGML_RPC=ON" in err and err.count("\n") == 1
    args = build_parser().parse_args(["run", "--prompt-file", "x", "--rpc", "base=a:1"])
    with pytest.raises(UserError, match="-DGGML_RPC=ON"):
        rpc_endpoints(args)


# -- servers ------------------------------------------------------------------------------------------------
@needs_rpc
def test_wrong_port_fails_fast(family, prompts):
    port = free_port()
    t0 = time.monotonic()
    result = run_cli(*model_args(family, prompts, "--rpc", f"base=127.0.0.1:{port}"), cwd=ROOT, timeout=60)
    assert time.monotonic() - t0 < 20
    assert result.returncode == 2
    assert f"127.0.0.1:{port}: connection refused" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


@needs_rpc
@pytest.mark.parametrize("draft", [["--draft-tokens", "0"], []], ids=["naive", "speculative"])
def test_base_split_over_two_servers_equals_local(family, prompts, servers, draft):
    local = tokens(run_cli(*model_args(family, prompts, *draft), cwd=ROOT))
    remote = run_cli(*model_args(family, prompts, *draft, "--verbose", "--rpc", "base=" + ",".join(servers)), cwd=ROOT)
    assert tokens(remote) == local
    log = remote.stderr
    # the base's layers sit on both servers; chat and reference were loaded without any RPC device
    assert "assigned to device RPC0" in log and "assigned to device RPC1" in log
    assert log.count("using device RPC") == 2


@needs_rpc
def test_rpc_through_latency_proxy_equals_local(family, prompts, servers):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from rpc_proxy import LatencyProxy
    finally:
        sys.path.pop(0)
    host, port = servers[0].split(":")
    proxy = LatencyProxy((host, int(port)), delay=0.002)
    try:
        local = tokens(run_cli(*model_args(family, prompts), cwd=ROOT))
        assert tokens(run_cli(*model_args(family, prompts, "--rpc", f"base={proxy.endpoint}"), cwd=ROOT)) == local
    finally:
        proxy.close()


@needs_rpc
def test_registering_an_endpoint_twice_adds_no_devices(servers):
    port = servers[0].split(":")[1]
    script = f"""
        from eft_local.llama import rpc
        lib = rpc.require_rpc().ggml
        n0 = lib.ggml_backend_dev_count()
        a = rpc.attach(["127.0.0.1:{port}"])
        n1 = lib.ggml_backend_dev_count()
        b = rpc.attach(["localhost:{port}", "127.0.0.1:{port}"])
        print(n1 - n0, lib.ggml_backend_dev_count() - n1, a == b)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.stdout.split() == ["1", "0", "True"], out.stderr


@needs_rpc
def test_server_lost_between_decodes_is_an_error_not_an_abort(family):
    proc, port = start_server()
    script = f"""
        import os, signal, time
        from eft_local.llama.adapter import LlamaModel
        from eft_local.llama.rpc import RpcServerLost
        m = LlamaModel({str(family.base)!r}, n_ctx=128, n_threads=1, n_gpu_layers=-1, rpc_servers=["127.0.0.1:{port}"])
        m.eval([1, 5, 6])
        os.kill({proc.pid}, signal.SIGKILL)
        time.sleep(1.0)
        try:
            m.eval([7])
        except RpcServerLost as e:
            print("LOST", e)
        m.close()
        print("CLOSED")
    """
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
        )
    finally:
        stop(proc)
    assert out.returncode == 0, out.stderr
    assert f"LOST RPC server 127.0.0.1:{port}" in out.stdout and "CLOSED" in out.stdout


@needs_rpc
def test_server_killed_mid_run_ends_with_an_error(family, tmp_path):
    victim, port = start_server()
    keep, port2 = start_server()
    prompts = tmp_path / "many.txt"
    prompts.write_text("".join(f"hello world {i}\n" for i in range(200)))
    out = tmp_path / "out.jsonl"
    args = model_args(
        family, prompts, "--max-tokens", "200", "--output", str(out), "--rpc", f"base=127.0.0.1:{port},127.0.0.1:{port2}"
    )
    client = subprocess.Popen(
        [sys.executable, "-m", "eft_local", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        partial = out.with_name(out.name + ".partial")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (partial.exists() and partial.read_text().count("\n") >= 1):
            time.sleep(0.05)
        assert client.poll() is None, client.stderr.read()
        os.kill(victim.pid, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = client.communicate(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if client.poll() is None:
            client.kill()
        stop(victim)
        stop(keep)
    # killed during a decode: the process stops at once; between decodes: error rows, then exit 69
    assert client.returncode == rpc.EXIT_RPC_LOST, err
    lines = [line for line in err.splitlines() if f"127.0.0.1:{port}" in line]
    assert lines and "RPC server" in lines[-1], err
    if out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        failed = [i for i, r in enumerate(rows) if r["finish_reason"] == "error"]
        assert failed and failed == list(range(failed[0], len(rows)))
        assert f"127.0.0.1:{port}" in rows[-1]["error"]
    else:
        rows = [json.loads(line) for line in partial.read_text().splitlines()]
        assert rows and all(r["finish_reason"] in ("length", "stop", "error") for r in rows)


@needs_rpc
def test_server_on_other_address_warns_about_authentication():
    proc, _ = start_server(host="0.0.0.0")
    try:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: a clean exit
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert "no authentication" in err
    assert proc.returncode == 0 and "stopped" in err


@needs_rpc
def test_server_port_in_use_is_one_line(servers):
    result = run_cli("rpc-server", "--port", servers[0].split(":")[1], cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr and result.stderr.count("\n") == 1


@needs_rpc
def test_server_lost_between_decodes_in_a_batch_error_rows_then_exit_69(family, tmp_path):
    """Kill the server right before a decode (deterministic): that prompt and the later ones are
    error rows, OUT is complete, and the run ends with one line and exit status 69."""
    proc, port = start_server()
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"hello world {i}\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    argv = model_args(family, prompts, "--output", str(out), "--rpc", f"base=127.0.0.1:{port}")
    script = f"""
        import os, signal, sys, time
        from eft_local import cli
        from eft_local.llama import rpc
        real, calls = rpc.check_alive, [0]
        def check(endpoints, what=""):
            calls[0] += 1
            if calls[0] == 30:
                os.kill({proc.pid}, signal.SIGKILL)
                time.sleep(1.0)
            return real(endpoints, what)
        rpc.check_alive = check
        sys.exit(cli.main({argv!r}))
    """
    try:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120
        )
    finally:
        stop(proc)
    assert result.returncode == rpc.EXIT_RPC_LOST, result.stderr
    assert f"RPC server 127.0.0.1:{port} was lost during the run" in result.stderr.splitlines()[-1]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reasons = [r["finish_reason"] for r in rows]
    assert len(rows) == 5 and reasons[0] != "error" and reasons[-1] == "error", reasons
    first = reasons.index("error")
    assert set(reasons[first:]) == {"error"} and "closed the connection" in rows[first]["error"]


def test_rpc_for_a_role_that_is_not_loaded_fails_before_loading(family, tmp_path, capsys):
    from eft_local.cli import main

    pf = tmp_path / "p.txt"
    pf.write_text("hello\n")
    models = role_args(family, threads=None)
    assert main(["run", "--prompt-file", str(pf), *models, "--rpc", "bass=127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown role 'bass'" in err[0]


def test_models_listing_says_where_each_role_runs(tmp_path, capsys):
    import argparse

    from eft_local.cli.models import register

    files = "\n".join(f'{r} = {{ repo_id = "a/b", filename = "{r}.gguf" }}' for r in ("base", "chat", "reference"))
    path = tmp_path / "m.toml"
    path.write_text(f'[profiles.p]\nrpc = {{ base = "10.0.0.5:50052" }}\n{files}\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["models", "--models-file", str(path), "--models-dir", str(tmp_path)])
    args.func(args)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.strip().startswith("base") and "runs on RPC 10.0.0.5:50052" in line for line in lines)
    assert not any(line.strip().startswith("chat") and "RPC" in line for line in lines)
