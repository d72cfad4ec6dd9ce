"""``casemate sessions``, ``user list`` and ``group list`` print headed tables that fit a
100-column terminal, with human units and no False/NULL/None noise (issue 17, item 6)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pexpect

import casemate
from casemate.testing import ServerProcess

NOISE = re.compile(r"\b(False|True|NULL|None)\b")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def test_sessions_fit_100_columns_with_human_units(plain_server: ServerProcess) -> None:
    long_program = "nightly-invoice-reconciliation-worker-with-a-very-long-name"
    with plain_server.connect(program=long_program) as busy, plain_server.connect() as idle:
        busy.execute("CREATE TABLE t (v INTEGER)")
        busy.execute("INSERT INTO t VALUES (1)")  # in a transaction, holding the write lock
        idle.execute("SELECT 1")
        idle.commit()
        out = cli("sessions", plain_server.url).stdout
        lines = out.splitlines()
        assert max(len(ln) for ln in lines) <= 100, out
        assert re.match(r"\s*id \| user\s+\| address\s+\| program\s+\| connected \| idle", lines[0])
        assert set(lines[1]) <= {"-", "+"}
        assert lines[-1] == "(3 sessions)"
        assert not NOISE.search(out), out
        mine = next(ln for ln in lines if ln.lstrip().startswith(f"{busy.session_id} |"))
        cells = [c.strip() for c in mine.split("|")]
        assert cells[3].startswith("nightly-invoice") and cells[3].endswith("…")
        assert re.fullmatch(r"\d+\.\d s", cells[5])  # idle, in words
        assert cells[6] == "no"  # not encrypted
        assert re.fullmatch(r"\d+\.\d s", cells[8]) and re.fullmatch(r"\d+\.\d s", cells[9])
        other = next(ln for ln in lines if ln.lstrip().startswith(f"{idle.session_id} |"))
        assert [c.strip() for c in other.split("|")][8:] == ["", ""]  # no transaction

        wide = cli("sessions", plain_server.url, "--wide").stdout
        assert long_program in wide and "cipher" in wide.splitlines()[0]
        assert not NOISE.search(wide), wide
        rows = json.loads(cli("sessions", plain_server.url, "--json").stdout)
        assert {r["program"] for r in rows} >= {long_program}
        assert next(r for r in rows if r["id"] == idle.session_id)["transaction_seconds"] is None
        busy.rollback()


def test_narrow_terminal_cuts_text_columns(plain_server: ServerProcess) -> None:
    with plain_server.connect(program="p" * 60):
        child = pexpect.spawn(sys.executable, ["-m", "casemate", "sessions", plain_server.url],
                              encoding="utf-8", dimensions=(24, 80), timeout=30)
        child.expect(pexpect.EOF)
        out = (child.before or "").replace("\r", "")
        assert "(2 sessions)" in out and "ppp…" in out
        assert max(len(ln) for ln in out.splitlines()) <= 80, out


def test_user_and_group_lists(plain_server: ServerProcess, tmp_path: Path) -> None:
    db = str(plain_server.db)
    subprocess.run([sys.executable, "-m", "casemate", "user", "add", db, "clerk", "--group",
                    "readonly", "--password", "clerk-pw"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "casemate", "group", "add", db, "auditors"],
                   check=True, capture_output=True)
    with plain_server.connect() as conn:
        conn.execute("CREATE TABLE ledger (v INTEGER)")
        conn.commit()
    subprocess.run([sys.executable, "-m", "casemate", "group", "grant", db, "auditors",
                    "ledger", "SELECT", "INSERT"], check=True, capture_output=True)
    for target in (db, plain_server.url):
        users = cli("user", "list", target).stdout.splitlines()
        assert re.match(r"\s*name\s+\| group\s+\| created", users[0])
        clerk = [c.strip() for c in next(ln for ln in users if "clerk" in ln).split("|")]
        assert clerk[1] == "readonly"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", clerk[2])
        assert users[-1] == "(2 users)"
        groups = cli("group", "list", target).stdout
        assert not NOISE.search(groups) and " - " not in groups, groups
        lines = groups.splitlines()
        assert re.match(r"\s*group\s+\| table\s+\| privileges", lines[0])
        cells = {tuple(c.strip() for c in ln.split("|")) for ln in lines[2:-1]}
        assert ("auditors", "ledger", "INSERT, SELECT") in cells
        assert ("readonly", "all tables", "SELECT") in cells
        assert lines[-1] == "(4 groups)"
        assert {"name": "clerk", "group": "readonly"}.items() <= next(
            u for u in json.loads(cli("user", "list", target, "--json").stdout)
            if u["name"] == "clerk").items()
        assert ["auditors", "ledger", "INSERT,SELECT"] in [
            [g["group"], g["table"], g["privileges"]]
            for g in json.loads(cli("group", "list", target, "--json").stdout)]


def test_status_in_human_units(plain_server: ServerProcess) -> None:
    out = cli("status", plain_server.url).stdout
    assert re.search(r"Uptime:\s+\d+\.\d s", out) or re.search(r"Uptime:\s+\d+ (s|min)", out)
    assert re.search(r"Data size:\s+\d+(\.\d)? (bytes|kB|MB)", out), out
    assert casemate  # the client package is importable alongside


def test_control_characters_cannot_drive_the_admins_terminal(plain_server: ServerProcess) -> None:
    """A user names their program with escape sequences (clear the screen, retitle the
    window); the admin's session list shows them as text."""
    hostile = "evil\x1b[2J\x1b]0;owned\x07\r"
    with plain_server.connect(program=hostile):
        for args in ([], ["--wide"]):
            out = cli("sessions", plain_server.url, *args).stdout
            assert "\x1b" not in out and "\x07" not in out and "\r" not in out
            assert "evil\\x1b[2J" in out
