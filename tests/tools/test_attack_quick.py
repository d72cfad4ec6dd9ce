"""The attack script's quick mode: every attack of issue 14's items 1, 2, 4, 7 and 8 is
tried against a fresh real server, and every defence must hold."""

from tools.attack import ATTACKS, main


def test_every_attack_is_stopped() -> None:
    outcomes = main(["--quick"])
    assert [o.attack for o in outcomes] == list(ATTACKS)
    fell = [f"{o.attack}: {o.detail}" for o in outcomes if not o.held]
    assert not fell, fell
