"""End-to-end smoke test: a real server process and a real client, in both modes."""

import pytest


@pytest.mark.parametrize("fixture", ["plain_server", "tls_server"])
def test_roundtrip(request: pytest.FixtureRequest, fixture: str) -> None:
    server = request.getfixturevalue(fixture)
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        cur.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",)])
        cur.execute("SELECT name FROM t ORDER BY id")
        assert cur.fetchall() == [("a",), ("b",)]
        assert conn.security.encrypted == (fixture == "tls_server")
