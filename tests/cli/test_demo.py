"""``casemate demo``'s database is written through the storage backend (the CLI opens no
SQLite file itself: docs/architecture.md) and served by a real server."""

from decimal import Decimal
from pathlib import Path

from casemate.cli.demo import _CUSTOMERS, _ORDERS, DEMO_PASSWORD, create_demo
from casemate.testing import ServerProcess


def test_the_demo_database_serves_its_tables_and_methods(tmp_path: Path) -> None:
    folder = create_demo(tmp_path / "demo")
    s = ServerProcess(folder.path, password=DEMO_PASSWORD).start()
    try:
        with s.connect() as conn:
            cur = conn.cursor()
            # Expected values come from the rows the demo writes, not from copies of them.
            cur.execute("SELECT id, name, city FROM customers ORDER BY id")
            assert cur.fetchall() == [(c[0], c[1], c[2]) for c in _CUSTOMERS]
            cur.execute("SELECT count(*) FROM orders")
            assert cur.fetchone() == (len(_ORDERS),)
            for customer in {o[1] for o in _ORDERS}:
                total = sum((Decimal(o[2]) for o in _ORDERS if o[1] == customer), Decimal(0))
                assert conn.call("customer_total", customer) == total
    finally:
        s.stop()
