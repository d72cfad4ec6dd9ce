"""The public DB-API 2.0 compliance suite (Stuart Bishop's ``dbapi20.py``, vendored
unchanged from PyPI's ``dbapi-compliance`` 1.15.0, public domain) against a real server.

Only what PEP 249 itself marks optional is skipped: ``nextset`` (several result sets from
one call) and ``setoutputsize`` (a driver-specific size hint).  ``callproc`` calls a
server method named ``lower`` (Casemate's stored procedures are server methods).
"""

from __future__ import annotations

import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest

import casemate
from casemate.database import create_database
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests import dbapi20

LOWER = '''
from casemate.methods import method


@method
def lower(db, text: str) -> str:
    return text.lower()
'''

# The suite closes connections with uncommitted work on purpose (PEP 249: closing rolls
# back); Casemate says so in a warning, which pytest would otherwise turn into an error.
pytestmark = pytest.mark.filterwarnings("ignore::casemate.errors.UncommittedWorkWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db: Path = tmp_path_factory.mktemp("dbapi20") / "db"
    create_database(db, "dbapi20", ADMIN_PASSWORD)
    (db / "Methods" / "compliance.py").write_text(LOWER)
    s = ServerProcess(db).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _driver(request: pytest.FixtureRequest, server: ServerProcess) -> None:
    request.cls.connect_args = (server.url,)


class TestCasemateDBAPI20(dbapi20.DatabaseAPI20Test, unittest.TestCase):
    driver = casemate
    connect_kw_args: dict[str, object] = {}  # noqa: RUF012 (the suite's own convention)

    def test_nextset(self) -> None:
        self.skipTest("nextset is an optional extension of PEP 249 (one result set per call)")

    def test_setoutputsize(self) -> None:
        self.skipTest("setoutputsize is a driver-specific hint, optional in PEP 249")
