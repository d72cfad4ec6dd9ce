"""What administrators read and run, against real servers: client-chosen strings cannot
forge rows or log lines, IPv6 peers are shown as ``[addr]:port``, the logs rotate by size,
and ``casemate cert reload`` signals only a server that holds its pid file."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import casemate
from casemate.protocol import PROTOCOL_VERSION, Msg, encode_frame
from tests.conftest import ADMIN_PASSWORD, HAVE_V6, ServerProcess, set_setting

FORGED = "psql\n99  mallory  10.0.0.9:1  forged-row\u202e"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                          text=True, timeout=60)



def raw_login(port: int, user: str) -> bytes:
    """A login attempt as a hand-made client sends it; returns what the server answered."""
    hello = encode_frame(Msg.HELLO, {"protocol": PROTOCOL_VERSION, "program": "raw\nFORGED"})
    first = encode_frame(Msg.SASL_INITIAL, ("SCRAM-SHA-256", f"n,,n={user},r=abcdefghijkl"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(hello + first)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_client_strings_cannot_forge_rows_or_log_lines(plain_server: ServerProcess) -> None:
    with casemate.connect(plain_server.url, program=FORGED):
        r = cli("sessions", plain_server.url, "--wide")  # --wide: no value cut to fit
        assert r.returncode == 0, r.stderr
        assert "forged-row" in r.stdout
        assert not any(line.startswith("99") for line in r.stdout.splitlines())
        assert "\u202e" not in r.stdout and "psql\\x0a99" in r.stdout
        r = cli("sessions", plain_server.url, "--json")
        programs = [s["program"] for s in json.loads(r.stdout)]
        assert any(p.startswith("psql\\x0a99") and p.endswith("\\u202e") for p in programs)
    raw_login(plain_server.port, "x\nFORGED LINE")  # the client library refuses such names
    log = (plain_server.db / "Logs" / "server.log").read_text(encoding="utf-8")
    audit = (plain_server.db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    for text in (log, audit):
        assert not any(line.startswith(("99", "FORGED")) for line in text.splitlines())
        assert "\u202e" not in text


@pytest.mark.skipif(not HAVE_V6, reason="no IPv6 loopback")
def test_ipv6_peers_in_brackets(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db(), extra=("--host", "::1", "--host", "127.0.0.1"))
    with casemate.connect(host="::1", port=server.port, user="admin",
                          password=ADMIN_PASSWORD) as c:
        port = c.execute("SELECT 1") and None
        rows = c.admin_table("sessions")[1]
        address = rows[0][2]
        assert re.fullmatch(r"\[::1\]:\d+", address), address
        port = address.rsplit(":", 1)[1]
    time.sleep(0.2)
    log = (server.db / "Logs" / "server.log").read_text(encoding="utf-8")
    assert f"from [::1]:{port}" in log


def test_logs_rotate_by_size(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    for key, value in (("log_file_max_kb", "16"), ("log_files_kept", "2"),
                       ("throttle_base_delay_seconds", "0"),
                       ("throttle_max_delay_seconds", "0")):
        set_setting(db, key, value)
    server = server_factory(db)
    for i in range(220):  # ~ 2 x 16 KiB of audit lines and of server log lines
        with pytest.raises(casemate.OperationalError):
            casemate.connect(host="127.0.0.1", port=server.port, user=f"guess{i:04d}" * 4,
                             password="wrong", reconnect_attempts=0)
    logs = db / "Logs"
    for name in ("audit.jsonl", "server.log"):
        assert (logs / f"{name}.1").exists() and (logs / f"{name}.2").exists(), name
        assert not (logs / f"{name}.3").exists(), name
        for f in (logs / name, logs / f"{name}.1", logs / f"{name}.2"):
            assert f.stat().st_size <= 16 * 1024 + 1024, f
    newest = (logs / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in newest)  # whole lines: no event cut in two
    assert any("guess0219" in line for line in newest)


def test_cert_reload_signals_only_the_server_holding_the_pid_file(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (db / "Logs").mkdir(exist_ok=True)
        (db / "Logs" / "server.pid").write_text(f"{victim.pid}\n")  # stale: names another process
        r = cli("cert", str(db), "reload")
        assert r.returncode != 0 and "no running server" in r.stderr
        time.sleep(0.3)
        assert victim.poll() is None  # not signalled
        server = server_factory(db)  # a stale file does not stop a start
        r = cli("cert", str(db), "reload")
        assert r.returncode == 0 and f"pid {server.pid}" in r.stdout, r.stderr
        second = ServerProcess(db)  # the folder is taken while the first one runs
        with pytest.raises(RuntimeError, match="already running"):
            second.start()
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert os.path.exists(db / "Logs" / "server.pid")


def test_pid_file_of_a_crashed_server_is_not_believed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db: Path = make_db(encrypted=True)
    server = server_factory(db)
    pid = server.pid
    os.kill(pid, signal.SIGKILL)
    server.proc.wait()  # type: ignore[union-attr]
    assert (db / "Logs" / "server.pid").read_text().strip() == str(pid)
    r = cli("cert", str(db), "reload")
    assert r.returncode != 0 and "no running server" in r.stderr
