"""The login throttle's memory bound never forgets the user under attack.

Above 100,000 remembered keys the throttle forgets half of them.  It used to forget the
oldest-inserted keys, which are the ones attacked longest: an attacker who sent failed
logins for 100,000 made-up names wiped the counter of the user it was guessing for.
"""

from __future__ import annotations

from casemate.server.audit import Throttle


def test_a_flood_of_made_up_names_does_not_reset_the_targets_count() -> None:
    t = Throttle(after=3, base=0.5, cap=5.0, forget=600.0)
    for i in range(20):
        t.failed("192.0.2.1", "boss", float(i))
    before = t.delay("192.0.2.7", "boss", 30.0)
    assert before == 5.0  # 20 failures: the capped delay, whatever the address
    for i in range(100_001):  # one failure each, from many addresses, after the target's
        t.failed(f"198.51.{i // 256 % 256}.{i % 256}", f"name{i}", 31.0)
    assert t.delay("192.0.2.7", "boss", 32.0) == before
