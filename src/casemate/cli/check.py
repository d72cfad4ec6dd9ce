"""``casemate check DIR``: what in a database needs a person's attention.

Today: DECIMAL/NUMERIC columns of SQLite tables made before Casemate stored
decimals exactly.  SQLite's NUMERIC affinity turned their values into 64-bit
numbers, which may have lost digits or trailing zeros; nothing can tell which
value was rounded, so Casemate reports them and changes nothing
(docs/types.md says how to migrate such a column).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..storage import StorageError
from ..storage.sqlite import DATA_FILE
from ..storage.sqlite_files import rounded_decimal_columns_of_file
from .main import fail, open_folder

__all__ = ["check"]


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
def check(directory: Path) -> None:
    """Report DECIMAL columns of DIRECTORY whose values SQLite stored rounded (exit 1 if any)."""
    folder = open_folder(directory)
    if folder.settings().storage.backend != "sqlite":
        click.echo("PostgreSQL storage: numeric values are exact; nothing to check")
        return
    path = folder.data_dir / DATA_FILE
    try:
        found = rounded_decimal_columns_of_file(path)
    except StorageError as e:
        fail(f"cannot read {path}: {e.message}")
        return
    if not found:
        click.echo("ok: every DECIMAL/NUMERIC column holds exact values")
        return
    for table, column, n in found:
        click.echo(f"{table}.{column}: {n} value(s) stored as SQLite numbers, possibly "
                   "rounded (made before exact decimals; see docs/types.md)")
    raise SystemExit(1)
