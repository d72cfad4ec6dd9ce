"""The scale-out benchmark runs (quick mode): one and two Casemate servers over one PostgreSQL."""

from __future__ import annotations

import pytest

from casemate.pgtest import PostgresUnavailable, postgres_bin


def test_scaleout_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL server programs are missing: {e}")
    from bench.pg_scaleout import main
    out = main(["--quick"])
    assert out["one"] > 50 and out["two"] > 50 and out["errors"] == 0
    assert "RATIO two/one servers" in capsys.readouterr().out
