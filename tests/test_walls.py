"""The walls between Casemate's parts (docs/architecture.md) hold in code, not only on paper.

``lint-imports`` checks the import-linter contracts of pyproject.toml (who may import
whom, and that only ``storage/`` imports an engine's driver).  It reads import
statements; what an import *loads* at run time is checked here too, in a fresh
interpreter each: the package root is lazy (PEP 562), so importing a lower part
(the protocol, a storage backend, the server) never loads the client above it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def _python(code: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_lint_imports_keeps_every_contract() -> None:
    r = _python(LINT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout  # every contract ran and was kept


@pytest.mark.parametrize(("module", "added", "contract"), [
    # The client reached through the package root: `import casemate` is all it takes.
    ("server/monitor.py", "def _probe() -> None:\n    import casemate\n    casemate.connect('')",
     "server/ never imports a client"),
    ("storage/base.py", "def _probe() -> None:\n    from .. import Error  # noqa: F401",
     "storage/ never imports the server, a client"),
    ("protocol/codec.py", "import asyncio  # noqa: F401", "protocol/ is sans-I/O"),
    ("server/session.py", "import sqlite3  # noqa: F401", "only home of the database engines"),
    ("cli/shell.py", "import psycopg  # noqa: F401", "only home of the database engines"),
    ("client/core.py", "from ..storage import base  # noqa: F401", "clients never import"),
    ("tls.py", "from .protocol import codec  # noqa: F401", "tls.py never imports the protocol"),
])
def test_each_wall_stops_an_import_across_it(tmp_path: Path, module: str, added: str,
                                             contract: str) -> None:
    """The contracts have teeth: the same package plus one import across a wall fails."""
    shutil.copytree(SRC / "casemate", tmp_path / "src" / "casemate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "src" / "casemate" / module, "a") as f:
        f.write(f"\n\n{added}\n")
    r = _python(LINT, tmp_path)
    assert r.returncode != 0, r.stdout
    broken = r.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, r.stdout


def _loaded_by(module: str) -> set[str]:
    r = _python(f"import json, sys, {module}; "
                "print(json.dumps(sorted(m for m in sys.modules if m.startswith('casemate'))))")
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout))


CLIENT = {"casemate.dbapi", "casemate.aio", "casemate.client"}


@pytest.mark.parametrize(("module", "never"), [
    ("casemate", CLIENT | {"casemate.errors", "casemate.tls", "casemate.settings"}),
    ("casemate.protocol", CLIENT | {"casemate.tls", "casemate.settings", "casemate.storage",
                                    "casemate.server", "casemate.keepalive"}),
    ("casemate.protocol.core", CLIENT | {"casemate.tls", "casemate.settings"}),
    ("casemate.storage", CLIENT | {"casemate.server", "casemate.cli", "casemate.tls"}),
    ("casemate.storage.sqlite", CLIENT | {"casemate.server", "casemate.tls"}),
    ("casemate.server", CLIENT | {"casemate.cli", "casemate.sqlalchemy"}),
    ("casemate.tls", CLIENT | {"casemate.protocol"}),
    ("casemate.errors", CLIENT | {"casemate.tls", "casemate.settings"}),
])
def test_importing_a_lower_part_loads_nothing_above_it(module: str, never: set[str]) -> None:
    loaded = _loaded_by(module)
    assert module in loaded
    assert not loaded & never, f"import {module} loaded {sorted(loaded & never)}"


def test_the_root_package_still_is_the_db_api_module() -> None:
    r = _python(
        "import casemate, casemate.dbapi as d, casemate.errors as e, json\n"
        "assert (casemate.apilevel, casemate.threadsafety, casemate.paramstyle) == "
        "('2.0', 1, 'qmark')\n"
        "assert casemate.connect is d.connect and casemate.Connection is d.Connection\n"
        "assert casemate.Binary(b'x') == b'x' and casemate.Error is e.Error\n"
        "assert set(casemate.__all__) == {'__version__', *casemate._EXPORTS}\n"
        "assert issubclass(casemate.IntegrityError, casemate.DatabaseError)\n"
        "from casemate import Cursor, Security, Warning, ROWID\n"
        "ns = {}; exec('from casemate import *', ns)\n"
        "missing = [n for n in casemate.__all__ if n not in ns or n not in dir(casemate)]\n"
        "assert not missing, missing\n"
        "try:\n    casemate.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
        "print(json.dumps(sorted(casemate.__all__)))")
    assert r.returncode == 0, r.stderr
    names = set(json.loads(r.stdout))
    assert {"connect", "Connection", "Cursor", "Error", "Warning", "apilevel", "threadsafety",
            "paramstyle", "Binary", "Timestamp", "STRING", "ROWID", "Security",
            "ProtocolError", "SecurityError", "Json", "__version__"} <= names


def test_a_bare_import_still_reaches_the_subpackages_it_used_to_load() -> None:
    # `import casemate` then `casemate.errors.Codes`, as code written against the eager
    # package may do.
    r = _python("import casemate; print(casemate.errors.Codes.BUSY, casemate.tls.__name__, "
                "casemate.protocol.PROTOCOL_VERSION)")
    assert r.returncode == 0, r.stderr
