"""The ring buffer behind the web page's graphs: one hour of samples, rates from counters."""

from __future__ import annotations

from types import SimpleNamespace

from casemate.server.history import KEEP, SERIES, History


def test_rates_shares_and_one_hour_kept() -> None:
    server = SimpleNamespace(statements=0, bytes_in=0, bytes_out=0, sessions={
        1: SimpleNamespace(tls_version="TLSv1.3"), 2: SimpleNamespace(tls_version=None)})
    h = History(server, interval=2.0)  # type: ignore[arg-type]
    server.statements, server.bytes_in, server.bytes_out = 100, 5000, 9000
    t, sessions, encrypted, *_ = h.sample()
    assert sessions == 2 and encrypted == 50.0
    got = h.since(0)
    assert list(got) == ["interval", "time", *SERIES]
    assert got["statements_per_second"][0] > 0 and got["bytes_out_per_second"][0] > 0
    assert h.since(t) == {"interval": 2.0, "time": [], **{k: [] for k in SERIES}}
    for _ in range(int(KEEP / 2.0) + 50):
        h.sample()
    assert len(h.samples) == int(KEEP / 2.0)  # an hour, not more
    server.sessions = {}
    assert h.sample()[2] == 0.0  # no session: no division by zero
