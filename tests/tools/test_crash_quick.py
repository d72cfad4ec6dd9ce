"""The crash harness's quick mode: a few kill -9 cycles, nothing acknowledged may be lost."""

from tools.crash_test import main


def test_crash_cycles_lose_nothing() -> None:
    totals = main(["--cycles", "3", "--quick", "--seed", "7"])
    assert totals.cycles == 3
    assert all(n > 0 for n in totals.per_cycle)  # writers really committed in every cycle
    assert totals.lost == 0
    assert totals.integrity_failures == 0
