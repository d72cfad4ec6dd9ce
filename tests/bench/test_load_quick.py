"""The load test's quick mode: 20 concurrent asyncio sessions for 3 s on a real encrypted
server; no unexpected error, operations of every kind, invariants hold."""

from bench.load import MIX, main


def test_load_quick_has_no_unexpected_errors() -> None:
    res = main(["--quick", "--seed", "3"])
    assert res.sessions == 20
    assert res.mode == "encrypted" and "encrypted" in res.security
    assert not res.unexpected, dict(res.unexpected)
    assert not res.invariants, res.invariants
    assert res.operations > 0
    assert all(res.latencies.get(kind) for kind, _ in MIX), {k: len(v) for k, v in
                                                             res.latencies.items()}
    assert res.rss_peak >= res.rss_start > 0
    assert res.ok
