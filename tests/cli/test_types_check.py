"""``casemate check DIR`` and the server's start-up warning report DECIMAL columns of a
database made before exact decimals (issue 19), without changing them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from casemate.testing import ServerProcess


def _check(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", "check", str(db)],
                          capture_output=True, text=True, timeout=60)


def test_rounded_decimal_columns_are_reported_not_fixed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    assert _check(db).returncode == 0
    # A table made the old way (straight into the file): NUMERIC affinity rounds.
    raw = sqlite3.connect(db / "Data" / "data.sqlite")
    raw.execute("CREATE TABLE old_money (amount DECIMAL(20,2))")
    raw.execute("INSERT INTO old_money VALUES ('12345678901234567.89')")
    raw.commit()
    (stored,) = raw.execute("SELECT amount FROM old_money").fetchone()  # what the file holds
    raw.close()
    exact = Decimal("12345678901234567.89")
    assert Decimal(str(stored)) != exact  # NUMERIC affinity rounded it on the way in
    r = _check(db)
    assert r.returncode == 1 and "old_money.amount: 1 value(s)" in r.stdout, r.stdout
    server: ServerProcess = server_factory(db)
    assert "old_money.amount" in server.log()
    with server.connect() as conn:
        conn.execute("CREATE TABLE new_money (amount DECIMAL(20,2))")
        conn.execute("INSERT INTO new_money VALUES (?)", (Decimal("12345678901234567.89"),))
        conn.commit()
        (served,) = conn.execute("SELECT amount FROM old_money").fetchone()
        assert served == Decimal(str(stored)) and served != exact  # as stored, not "fixed"
    r = _check(db)
    assert "new_money" not in r.stdout and "old_money" in r.stdout
