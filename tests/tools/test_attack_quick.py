"""The attack script's quick mode: every attack of issue 14's items 1, 2, 4, 7 and 8 is
tried against a fresh real server, on each storage backend, and every defence must hold."""

import pytest

from casemate.pgtest import PostgresUnavailable, postgres_bin
from tools.attack import ATTACKS, main


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_attack_is_stopped(backend: str) -> None:
    if backend == "postgresql":
        try:
            postgres_bin()
        except PostgresUnavailable as e:
            pytest.skip(f"PostgreSQL server programs are missing: {e}")
    outcomes = main(["--quick", "--backend", backend])
    assert [o.attack for o in outcomes] == list(ATTACKS)
    fell = [f"{o.attack}: {o.detail}" for o in outcomes if not o.held]
    assert not fell, fell
