"""Red-team: a stranger guessing a known user name must not lock that user out.

Failed logins queue per address and per user (parallel guesses get no faster verdicts),
so a stranger who keeps the user's queue full from one address would make every
login of that user, from anywhere, wait past its deadline.  A workstation the user has
logged in from before is queued apart for that user.
"""

from __future__ import annotations

import threading
import time

import pytest

import casemate
from tests.access.test_limits import HAVE_V6
from tests.conftest import ADMIN_PASSWORD


@pytest.mark.skipif(not HAVE_V6, reason="needs the IPv6 loopback (::1) as a second address")
def test_guesses_from_another_address_do_not_lock_out_a_known_workstation(
        make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db(), extra=("--host", "127.0.0.1", "--host", "::1"))

    def login(host: str, password: str) -> None:
        casemate.connect(host=host, port=server.port, user="admin", password=password,
                         connect_timeout=30).close()

    login("::1", ADMIN_PASSWORD)  # the admin's usual workstation
    stop = threading.Event()

    def guess() -> None:
        while not stop.is_set():
            try:
                login("127.0.0.1", "wrong guess")
            except casemate.Error:
                pass
    guessers = [threading.Thread(target=guess, daemon=True) for _ in range(6)]
    for t in guessers:
        t.start()
    try:
        time.sleep(8)  # the throttle's delays reach their cap
        for _ in range(3):
            t0 = time.monotonic()
            login("::1", ADMIN_PASSWORD)
            assert time.monotonic() - t0 < 3.0
    finally:
        stop.set()
        for t in guessers:
            t.join(30)
