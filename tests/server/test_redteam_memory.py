"""Red-team: a result of large values must not balloon the server's memory.

Each value is within ``limits.max_value_bytes`` (16 MiB), but the server fetched result
rows 256 at a time before checking the batch's size: 40 rows of 16 MB took the server
to 2.5 GB and produced a frame the client refused.  A batch now holds at most one row
beyond its byte budget.
"""

from __future__ import annotations

import casemate
from casemate.database import make_verifier
from casemate.testing import ServerProcess
from tests.conftest import PeakRss

BIG_ROWS = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "SELECT x, zeroblob(?) FROM c")


def test_large_rows_are_fetched_within_the_batch_budget(plain_server: ServerProcess) -> None:
    with plain_server.connect() as admin:
        rec = make_verifier("ro", "ro-password-1", "readonly")
        admin.admin("user_add", name="ro", group="readonly",
                    verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    ro = casemate.connect(host="127.0.0.1", port=plain_server.port, user="ro",
                          password="ro-password-1")
    try:
        with PeakRss(plain_server.pid) as rss:
            cur = ro.cursor()
            cur.arraysize = 1000
            cur.execute(BIG_ROWS, (30, 8_000_000))
            seen = 0
            while rows := cur.fetchmany(1000):
                seen += len(rows)
                assert all(len(r[1]) == 8_000_000 for r in rows)
    finally:
        ro.close()
    assert seen == 30
    grew = rss.grown / 2**20
    assert grew < 150, f"the server grew by {grew:.0f} MiB for 30 rows of 8 MB"
