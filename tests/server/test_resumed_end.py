"""A request started in data_received that waits (handlers.Resumed) is finished by the
session's task even when the client goes away meanwhile: the statement in its worker
thread is stopped, the transaction it opened rolled back, the session ended and its
storage connection given back (Session.next_message hands the task a Resumed request
before it reports the session closed, so the connection is never rolled back while the
statement still runs in its thread)."""

from __future__ import annotations

import socket
import time

from casemate.protocol import Msg, encode_frame
from casemate.protocol.messages import Query
from tests.access.test_limits import raw_login
from tests.conftest import ServerProcess

SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
        "SELECT count(*) FROM c")


def test_a_client_gone_mid_request_leaves_the_server_sound(plain_server: ServerProcess) -> None:
    for i in range(12):
        sock, _ = raw_login(plain_server)
        # begin=True: the statement opens a transaction, which the end of the session
        # rolls back: the rollback must wait for the statement's thread.
        sock.sendall(encode_frame(Msg.QUERY, Query(1, f"{SLOW} -- {i}", (), True, 100)))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    with plain_server.connect() as conn:
        assert conn.execute("SELECT 42").fetchall() == [(42,)]
        deadline = time.monotonic() + 20
        while len(conn.admin_table("sessions")[1]) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(conn.admin_table("sessions")[1]) == 1  # only this one: the others ended
        conn.rollback()
    log = plain_server.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
