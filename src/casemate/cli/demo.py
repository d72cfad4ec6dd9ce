"""``casemate demo``: create (once) and serve a small demo database."""

from __future__ import annotations

from pathlib import Path

import click

from ..database import DatabaseFolder, create_database
from ..storage.access import Policy
from .connect import PORT

DEMO_PASSWORD = "demo"

_SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, since DATE);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                     amount DECIMAL, placed TIMESTAMP);
"""
_CUSTOMERS = [(1, "Ada Lovelace", "London", "2021-03-04"), (2, "Grace Hopper", "Arlington",
              "2022-11-09"), (3, "Edsger Dijkstra", "Eindhoven", "2023-06-30")]
_ORDERS = [(1, 1, "120.50", "2024-01-05T10:00:00+00:00"), (2, 1, "75.00",
           "2024-02-11T15:30:00+00:00"), (3, 2, "310.25", "2024-03-01T09:15:00+00:00")]


_METHODS = '''"""Server methods of the demo database (see docs/methods.md)."""

from decimal import Decimal

from casemate.methods import Rows, method


@method
def customer_total(db, customer_id: int) -> Decimal:
    """Total amount of a customer's orders, computed next to the data."""
    row = db.execute("SELECT coalesce(decimal_sum(amount), 0) FROM orders WHERE customer_id = ?",
                     (customer_id,)).fetchone()
    return Decimal(str(row[0]))


@method
def orders_of(db, customer_id: int) -> Rows:
    """Stream a customer's orders."""
    return db.rows("SELECT id, amount, placed FROM orders WHERE customer_id = ? ORDER BY id",
                   (customer_id,))
'''


def create_demo(path: Path) -> DatabaseFolder:
    folder, _ = create_database(path, "Casemate Demo", DEMO_PASSWORD)
    (path / "Methods" / "demo.py").write_text(_METHODS)
    backend = folder.backend()
    conn = backend.connect()  # as a server's admin session writes (docs/architecture.md)
    try:
        conn.set_policy(Policy("admin"))
        conn.begin()
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement, ())
        conn.executemany("INSERT INTO customers VALUES (?,?,?,?)", _CUSTOMERS)
        conn.executemany("INSERT INTO orders VALUES (?,?,?,?)", _ORDERS)
        conn.commit()
    finally:
        conn.close()
        backend.close()
    return folder


@click.command()
@click.argument("directory", type=click.Path(path_type=Path), default="casemate-demo")
@click.option("--port", type=PORT, default=None, help="TCP port (default: the settings', 19812).")
@click.pass_context
def demo(ctx: click.Context, directory: Path, port: int | None) -> None:
    """Create a demo database in DIRECTORY (once) and serve it.

    The demo's admin password is 'demo'.  Try, in another terminal:
    casemate shell casemate://admin:demo@localhost -c "SELECT * FROM customers"
    """
    from .main import serve
    if not (directory / "casemate.toml").exists():
        create_demo(directory)
        click.echo(f"Created demo database in {directory} (user admin, password "
                   f"{DEMO_PASSWORD!r})")
    click.echo("Try: casemate shell casemate://admin:demo@localhost "
               "-c \"SELECT * FROM customers\"")
    ctx.invoke(serve, directory=directory, host=(), port=port, verbose=False)
