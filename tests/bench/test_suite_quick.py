"""The benchmark suite's quick mode runs every workload on all four systems (no speed checks)."""

import pytest

from casemate.pgtest import PostgresUnavailable, postgres_bin


def test_suite_quick(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    from bench.suite import SYSTEMS, main
    res = main(["--quick"])
    out = capsys.readouterr().out
    for workload in ("lookups/s", "executemany rows/s", "fetch rows/s", "mix 8 clients ops/s"):
        for system in SYSTEMS:
            assert res.median(workload, system), (workload, system)
    assert res.median("connect+query/s", "casemate-tls resumed")
    assert "TLS / PG require" in out and "Targets:" in out
    assert "vs PostgreSQL require: lookups" in out
