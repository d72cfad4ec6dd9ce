"""``casemate demo``'s database is written through the storage backend (the CLI opens no
SQLite file itself: docs/architecture.md) and served by a real server."""

from decimal import Decimal
from pathlib import Path

from casemate.cli.demo import DEMO_PASSWORD, create_demo
from casemate.testing import ServerProcess


def test_the_demo_database_serves_its_tables_and_methods(tmp_path: Path) -> None:
    folder = create_demo(tmp_path / "demo")
    s = ServerProcess(folder.path, password=DEMO_PASSWORD).start()
    try:
        with s.connect() as conn:
            cur = conn.cursor()
            cur.execute("SELECT name, city FROM customers ORDER BY id")
            assert cur.fetchall()[0] == ("Ada Lovelace", "London")
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone() == (3,)
            assert conn.call("customer_total", 1) == Decimal("195.5")
    finally:
        s.stop()
