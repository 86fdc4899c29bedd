"""Naming the peer a crashing rpc-server was serving (issue 21 §4): read from Linux's
/proc/net/tcp, and where there is no such table (macOS, Windows, a container without /proc) or
it can't be read, the supervisor says the peer is unknown instead of failing."""

from __future__ import annotations

import io
from types import SimpleNamespace

from eft_local.cli import rpc_supervisor
from eft_local.cli.rpc_supervisor import Supervisor, peers


def test_peers_reads_connections_to_the_port(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:C35C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1\n"  # LISTEN :50012
        "   1: 0100007F:C35C 0700000A:D433 01 00000000:00000000 00:00000000 00000000  0 0 0\n"  # queued (no inode)
        "   2: 0100007F:C35C 0500000A:D431 01 00000000:00000000 00:00000000 00000000  0 0 2\n"  # 10.0.0.5:54321
        "   3: 0100007F:C35C 0600000A:D432 05 00000000:00000000 00:00000000 00000000  0 0 0\n"  # FIN_WAIT2
        "   4: 0100007F:D431 0100007F:C35D 01 00000000:00000000 00:00000000 00000000  0 0 3\n"  # another port
    )
    # served (accepted: an inode), then closing, then queued
    assert peers(0xC35C, table) == ["10.0.0.5:54321", "10.0.0.6:54322", "10.0.0.7:54323"]
    assert peers(0xC35C, table, likeliest=True) == ["10.0.0.5:54321"]
    table.write_text(table.read_text().replace(" 0 0 2\n", " 0 0 0\n").replace("D431 01", "D431 04"))
    # the served client already cut off (FIN_WAIT1) outranks a probe queued behind it
    assert peers(0xC35C, table, likeliest=True) == ["10.0.0.5:54321", "10.0.0.6:54322"]
    assert peers(0xC35C, tmp_path / "missing") == []


def test_a_table_in_a_format_it_does_not_know_is_skipped_not_a_crash(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "header\n 0: 0100007F:ZZ 0500000A:D431 01 x x x x 0 0 2\n 1: 0100007F:C35C nothex 01 a b c d 0 0 2\n short line\n"
    )
    assert peers(0xC35C, table) == []
    table.write_bytes(b"\xff\xfe not text")
    assert peers(0xC35C, table) == []


def serve_once(port: int) -> tuple[Supervisor, str]:
    """One child's output through the supervisor (no process: its stdout is a list of lines)."""
    log = io.StringIO()
    sup = Supervisor(["unused"], port, log=log)
    sup._relay(SimpleNamespace(stdout=[b"Starting RPC server v3.0.0\n", b"Accepted client connection\n"]))
    return sup, log.getvalue()


def test_without_a_connection_table_the_peer_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(rpc_supervisor, "PROC_NET", tmp_path / "no-such-table")  # not Linux
    sup, said = serve_once(50052)
    assert "Accepted client connection from an unknown peer" in said
    assert sup._peer_text() == "with no client known to be connected"


def test_with_a_connection_table_the_peer_is_named(tmp_path, monkeypatch):
    table = tmp_path / "tcp"
    table.write_text("header\n   0: 0100007F:C35C 0500000A:D431 01 00000000:00000000 00:00000000 00000000  0 0 2\n")
    monkeypatch.setattr(rpc_supervisor, "PROC_NET", table)
    sup, said = serve_once(0xC35C)
    assert "Accepted client connection from 10.0.0.5:54321" in said
    assert sup._peer_text() == "while serving 10.0.0.5:54321"
