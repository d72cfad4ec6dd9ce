"""Red-team tests of today's refactors (web routing table, typed protocol bodies, the fast
path's rights check, SQLite's event-loop limits kept between inline calls).

Each test attacks one refactored part through a real ``casemate serve`` process; most
guard behaviour that held (and matched the code before the refactor); one finding, older
than the refactor (a QUERY portal or begin flag of the wrong type did not end the session),
is fixed and its test now guards the fix.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import casemate
from casemate.database import make_verifier
from casemate.protocol import Message, Msg, ProtocolConnection, Role, encode_frame
from tests.access.test_limits import next_message, raw_login
from tests.conftest import ServerProcess, items_for_clerks
from tests.web import prepare_web_db, web_url
from tests.web.test_web_http import Web

PW = "redteam-today-pw"


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "casemate", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def add_user(admin: casemate.Connection, name: str, group: str) -> None:
    rec = make_verifier(name, PW, group)
    admin.admin("user_add", name=name, group=group,
                verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])


def raw(server: ServerProcess, user: str = "admin", password: str | None = None
        ) -> tuple[socket.socket, ProtocolConnection]:
    """A logged-in plain socket driven by the sans-I/O core (frames a client would refuse)."""
    return raw_login(server, user, password or (server.password if user == "admin" else PW))


def replies(sock: socket.socket, proto: ProtocolConnection, n: int) -> list[Message]:
    """The next ``n`` final replies (RESULT, COMPLETE, ERROR, SUSPENDED), with what precedes."""
    got: list[Message] = []
    final = 0
    while final < n:
        m = next_message(sock, proto)
        got.append(m)
        if m.type in (Msg.RESULT, Msg.COMPLETE, Msg.ERROR, Msg.SUSPENDED):
            final += 1
    return got


def closed(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def query(sql: str, portal: int = 0, params: tuple[Any, ...] = (), begin: bool = False
          ) -> bytes:
    return encode_frame(Msg.QUERY, (portal, sql, params, begin, 100))


def no_internal_errors(server: ServerProcess) -> None:
    log = server.log()
    assert "internal error" not in log and "Traceback" not in log, log


# -- 1. web routing: every route keeps its checks ------------------------------------------

ACTIONS = ["/logout", "/message", "/sessions/1/drop", "/settings", "/certificate/generate",
           "/certificate/csr"]
PAGES = ["/", "/sessions", "/settings", "/certificate", "/api/status", "/api/sessions",
         "/api/history"]
TRICKS = ["{}", "{}?x=1", "/{}", "{}/", "{}%2F", "/.{}"]


def test_web_routes_refuse_without_login_csrf_or_admin(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = prepare_web_db(make_db)
    server = server_factory(db)
    url = web_url(server)
    with server.connect() as admin:
        add_user(admin, "boss", "admin")
    boss = Web(url)
    assert boss.login("boss", PW).status == 303 and boss.token
    csrf = boss.csrf()
    anon, forged = Web(url), Web(url)
    forged.token = "A" * 43
    with server.connect(reconnect_attempts=0) as victim:
        sid = victim.session_id
        for web in (anon, forged):
            for path in PAGES:
                for trick in TRICKS:
                    p = trick.format(path)
                    for method in ("GET", "HEAD"):
                        r = web.request(method, p)
                        assert r.status in (303, 404), (method, p, r.status)
                        assert r.status == 404 or r.location == "/login"
                        assert b"csrf" not in r.body
            for path in [*ACTIONS, f"/sessions/{sid}/drop"]:
                for trick in TRICKS:
                    p = trick.format(path)
                    r = web.request("POST", p, {"csrf": csrf, "text": "pwned"})
                    assert r.status in (303, 404, 405), (p, r.status)
                    assert r.status != 303 or r.location == "/login", (p, r.location)
        # Logged in, but no or a wrong CSRF token; GET and odd methods on action URLs.
        for path in [*ACTIONS, f"/sessions/{sid}/drop"]:
            for form in ({}, {"csrf": ""}, {"csrf": csrf[:-1]}, {"csrf": csrf + "x"},
                         {"CSRF": csrf}):
                r = boss.request("POST", path, {**form, "text": "pwned"})
                assert r.status == 403, (path, form, r.status)
            for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"):
                r = boss.request(method, path)
                assert r.status in (400, 404, 405) or (path == "/settings" and method == "GET"), \
                    (method, path, r.status)
        # The CSRF token in the query string instead of the form does not count.
        r = boss.request("POST", f"/message?csrf={csrf}", {"text": "pwned"})
        assert r.status == 403
        assert victim.execute("SELECT 1").fetchone() == (1,)  # not dropped
        assert not [t for _, t in victim.notices if "pwned" in t]
        # Demoted by the CLI in another process: the page and every action refuse the cookie.
        cli("user", "group", str(db), "boss", "readwrite")
        for path in PAGES:
            r = boss.get(path)
            assert (r.status, r.location) == (303, "/login"), path
        r = boss.request("POST", "/message", {"csrf": csrf, "text": "pwned"})
        assert (r.status, r.location) == (303, "/login")
    # A removed admin over the wire: its cookie is dead at once.
    boss2 = Web(url)
    with server.connect() as admin:
        add_user(admin, "boss2", "admin")
        assert boss2.login("boss2", PW).status == 303
        csrf2 = boss2.csrf()
        admin.admin("user_remove", name="boss2")
        r = boss2.request("POST", "/message", {"csrf": csrf2, "text": "pwned"})
        assert (r.status, r.location) == (303, "/login")
        assert boss2.get("/api/sessions").location == "/login"
        assert not [t for _, t in admin.notices if "pwned" in t]
    # A Host name the page does not answer to (DNS rebinding) never reaches a page.
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil", "localhost.evil"):
        c = http.client.HTTPConnection(boss.host, boss.port, timeout=10)
        c.putrequest("GET", "/login", skip_host=True)
        c.putheader("Host", host)
        c.endheaders()
        assert c.getresponse().status == 421, host
        c.close()
    no_internal_errors(server)


# -- 2. typed protocol bodies --------------------------------------------------------------

FATAL = [
    (Msg.QUERY, None, "malformed QUERY message"),
    (Msg.QUERY, {"portal": 0, "sql": "SELECT 1"}, "malformed QUERY message"),
    (Msg.QUERY, (0, "SELECT 1", (), False), "malformed QUERY message"),
    (Msg.QUERY, (0, "SELECT 1", (), False, 10, 0), "malformed QUERY message"),
    (Msg.QUERY, (0, b"SELECT 1", (), False, 10), "malformed QUERY message"),
    (Msg.QUERY, (0, "SELECT ?", {"a": 1}, False, 10), "QUERY parameters must be an array"),
    (Msg.EXECUTE_MANY, ("SELECT 1", (), None), "malformed EXECUTE_MANY message"),
    (Msg.EXECUTE_MANY, ("SELECT 1", {"a": 1}, False), "malformed EXECUTE_MANY message"),
    (Msg.FETCH, (True, 10), "malformed FETCH message"),
    (Msg.FETCH, (1, None), "malformed FETCH message"),
    (Msg.FETCH, (1,), "malformed FETCH message"),
    (Msg.CLOSE_PORTAL, 1, "malformed CLOSE_PORTAL message"),
    (Msg.CLOSE_PORTAL, (False,), "malformed CLOSE_PORTAL message"),
    (Msg.CALL, (0, "m", (), {}, False, None), "malformed CALL message"),
    (Msg.CALL, (0, "m", {}, {}, False, 10), "malformed CALL message"),
    (Msg.ADMIN, ("status", ()), "malformed ADMIN message"),
    (Msg.ADMIN, ("status", {}, 1), "malformed ADMIN message"),
    (Msg.CANCEL, True, "malformed CANCEL message"),
    (Msg.CANCEL, None, "malformed CANCEL message"),
    (Msg.CANCEL, (1,), "malformed CANCEL message"),
    # Map keys other than text or bytes: their hashes can be chosen to collide.
    (Msg.CALL, (0, "nosuch", (), {1: 2}, False, 10), "malformed CALL message: malformed "
     "value: int is not allowed for map key when strict_map_key=True"),
    (Msg.ADMIN, ("nosuch", {(1, 2): None}), "malformed ADMIN message: malformed value: "
     "tuple is not allowed for map key when strict_map_key=True"),
]
# Decoded as documented: the session goes on.
LENIENT = [
    (Msg.FETCH, (-1, 10), "34000"),
    (Msg.FETCH, (2**63 - 1, -5), "34000"),
    (Msg.CLOSE_PORTAL, (2**64 - 1,), None),
    (Msg.ADMIN, ("drop", {"session": None}), "42000"),
    (Msg.EXECUTE_MANY, ("SELECT ?", (None, 1), False), "42000"),
    (Msg.QUERY, (0, "SELECT ?", ((1, 2),), False, 10), "42000"),
    (Msg.QUERY, (0, "SELECT 'a\x00b'", (), False, 10), "42000"),
    (Msg.QUERY, (0, "SELECT ?", (2**64 - 1,), False, 10), "22003"),
    (Msg.QUERY, (0, "SELECT 1", None, False, 10), None),
    (Msg.COMMIT, (1, 2), None),
    (Msg.ROLLBACK, {"x": [1]}, None),
    (Msg.SYNC, "x", None),
]


def test_malformed_bodies_end_only_their_session(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    with server.connect() as bystander:
        for msg, body, text in FATAL:
            sock, proto = raw(server)
            with sock:
                # A request pipelined before the malformed one is still answered.
                sock.sendall(query("SELECT 7") + encode_frame(msg, body) + query("SELECT 8"))
                got = replies(sock, proto, 2)
                assert got[0].type is Msg.RESULT and got[0].body[1] == (((7,),),)
                err = got[-1]
                assert err.type is Msg.ERROR, (msg, body, got)
                assert (err.body["code"], err.body["message"]) == ("08P01", text), (msg, body)
                assert closed(sock), (msg, body)
            assert bystander.execute("SELECT 1").fetchone() == (1,)
        for msg, body, code in LENIENT:
            sock, proto = raw(server)
            with sock:
                sock.sendall(encode_frame(msg, body) + query("SELECT 8"))
                got = replies(sock, proto, 2)
                errors = [m.body["code"] for m in got if m.type is Msg.ERROR]
                assert errors == ([code] if code else []), (msg, body, got)
                assert got[-1].type is Msg.RESULT and got[-1].body[1] == (((8,),),), (msg, body)
    no_internal_errors(server)


def test_malformed_bodies_before_login(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    hello = {"protocol": 1}
    cases = [
        [(Msg.HELLO, None)], [(Msg.HELLO, (1, 2))], [(Msg.HELLO, {"protocol": [1]})],
        [(Msg.HELLO, hello), (Msg.SASL_INITIAL, None)],
        [(Msg.HELLO, hello), (Msg.SASL_INITIAL, ({}, "x"))],
        [(Msg.HELLO, hello), (Msg.SASL_INITIAL, ("SCRAM-SHA-256", 5))],
        [(Msg.HELLO, hello), (Msg.SASL_INITIAL, ("EXTERNAL", ""))],
        [(Msg.HELLO, hello), (Msg.QUERY, (0, "SELECT 1", (), False, 10))],
        [(Msg.QUERY, (0, "SELECT 1", (), False, 10))], [(Msg.CANCEL, 1)],
    ]
    for seq in cases:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            proto = ProtocolConnection(Role.CLIENT)
            sock.sendall(b"".join(encode_frame(t, b) for t, b in seq))
            got = []
            while (m := next_message(sock, proto)).type is not Msg.ERROR:
                got.append(m.type)
            assert set(got) <= {Msg.HELLO_OK}, (seq, got)
            assert m.body["code"] in ("08P01", "08P04", "28000"), (seq, m.body)
            assert closed(sock), seq
    with server.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    no_internal_errors(server)


def test_query_portal_of_wrong_type_ends_the_session(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    """docs/protocol.md §4: "a body that decodes but has the wrong shape" gets ERROR 08P01
    and the connection is closed.  Found by the red team (and older than the typed
    messages): QUERY's lenient decoding called int() on the portal, so a nil, map or array
    portal was answered as a failed request and the session went on, in a state the
    client's ProtocolError says is over; "1" or 1.5 were taken for portal 1, and a
    non-boolean begin ("x") opened a transaction."""
    server = server_factory(make_db())
    for portal, begin in ((None, False), ({}, False), ([1], False), ("1", False),
                          (1.5, False), (True, False), (1, "x"), (1, 1)):
        sock, proto = raw(server)
        with sock:
            sock.sendall(encode_frame(Msg.QUERY, (portal, "SELECT 1", (), begin, 10)))
            err = replies(sock, proto, 1)[-1]
            assert err.type is Msg.ERROR and err.body["code"] == "08P01", err
            assert closed(sock, timeout=3), f"{portal!r}, {begin!r}: 08P01 but the session goes on"


# -- 3. the fast path's rights check ------------------------------------------------------

@pytest.fixture
def rights_server(make_db, server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    s: ServerProcess = server_factory(make_db())
    with s.connect() as admin:
        items_for_clerks(admin)
        add_user(admin, "clerk", "clerks")
        add_user(admin, "bob", "readwrite")
    return s


SELECT = "SELECT name FROM items WHERE id = 1"


def burst(sock: socket.socket, proto: ProtocolConnection, n: int, begin: bool = False
          ) -> list[Message]:
    """``n`` pipelined SELECTs in one write; their final replies."""
    sock.sendall(b"".join(query(SELECT, begin=begin) for _ in range(n)))
    return [m for m in replies(sock, proto, n)
            if m.type in (Msg.RESULT, Msg.COMPLETE, Msg.ERROR, Msg.SUSPENDED)]


@pytest.mark.parametrize("begin", [False, True])
def test_revoke_applies_to_the_very_next_fast_path_statement(rights_server: ServerProcess,
                                                             begin: bool) -> None:
    server = rights_server
    sock, proto = raw(server, "clerk")
    with sock:
        for _ in range(4):  # known short: served in data_received from now on
            assert all(m.type is Msg.RESULT for m in burst(sock, proto, 10, begin))
        cli("group", "revoke", str(server.db), "clerks", "items", "SELECT")
        got = burst(sock, proto, 8, begin)
        assert [m.body.get("code") if m.type is Msg.ERROR else m.type for m in got] \
            == ["42501"] * 8
        # Granted again over the wire, then revoked over the wire (this server's own change).
        with server.connect() as admin:
            admin.admin("grant", group="clerks", table="items", privileges=["SELECT"])
            if begin:
                sock.sendall(encode_frame(Msg.ROLLBACK, None))
                replies(sock, proto, 1)
            assert all(m.type is Msg.RESULT for m in burst(sock, proto, 10, begin))
            admin.admin("revoke", group="clerks", table="items", privileges=["SELECT"])
        got = burst(sock, proto, 8, begin)
        assert [m.body.get("code") if m.type is Msg.ERROR else m.type for m in got] \
            == ["42501"] * 8


def test_moved_or_removed_user_fast_path_session_ends(rights_server: ServerProcess) -> None:
    server = rights_server
    for change in (("user", "group", str(server.db), "bob", "readonly"),
                   ("user", "remove", str(server.db), "bob")):
        if change[1] == "remove":
            with server.connect() as admin:
                admin.admin("user_group", name="bob", group="readwrite")
        sock, proto = raw(server, "bob")
        with sock:
            for _ in range(4):
                assert all(m.type is Msg.RESULT for m in burst(sock, proto, 10))
            cli(*change)
            sock.sendall(b"".join(encode_frame(Msg.QUERY, (
                0, "INSERT INTO items (name) VALUES ('pear')", (), False, 100))
                for _ in range(3)) + b"".join(query(SELECT) for _ in range(5)))
            got = []
            with pytest.raises(AssertionError, match="server closed"):
                while True:
                    got.append(next_message(sock, proto))
            assert not [m for m in got if m.type in (Msg.RESULT, Msg.COMPLETE)], got
            assert [m.body["code"] for m in got if m.type is Msg.NOTICE] == ["57P06"]
    with server.connect() as admin:
        assert admin.execute("SELECT count(*) FROM items").fetchone() == (1,)


# -- 4. SQLite's event-loop limits ----------------------------------------------------------

METHODS = '''
from casemate.methods import method


@method
def big(db, n: int) -> int:
    return db.execute("SELECT length(randomblob(?))", [n]).fetchone()[0]
'''


def test_thread_statements_never_meet_the_inline_value_limit(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db: Path = make_db()
    (db / "Methods").mkdir(exist_ok=True)
    (db / "Methods" / "tools.py").write_text(METHODS)
    server = server_factory(db)
    big = 200_000  # well over the event loop's 16 KiB value limit
    with server.connect() as c:
        c.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)")
        c.execute("INSERT INTO blobs VALUES (1, zeroblob(10)), (2, zeroblob(?))", (big,))
        c.commit()
    sock, proto = raw(server)
    with sock:
        def warm() -> None:  # inline calls leave the inline limits on the connection
            sock.sendall(b"".join(query("SELECT b FROM blobs WHERE id = 1") for _ in range(20)))
            assert all(m.type is not Msg.ERROR for m in replies(sock, proto, 20))

        checks: list[tuple[bytes, Any]] = [
            (query("SELECT length(b) FROM blobs WHERE id = 2"), big),
            (query("SELECT b FROM blobs WHERE id = 2"), None),
            (query("SELECT length(randomblob(?))", params=(big,)), big),
            (query("SELECT length(zeroblob(?))", params=(big,)), big),
            (query("SELECT length(?)", params=("y" * big,)), big),
            (encode_frame(Msg.CALL, (0, "big", (big,), {}, False, 100)), big),
            (encode_frame(Msg.EXECUTE_MANY, ("INSERT INTO blobs (b) VALUES (?)",
                                             (("z" * big,),), False)), None),
        ]
        for frame, expected in checks:
            for begin in (False, True):
                warm()
                if begin:
                    sock.sendall(query("SELECT 1", begin=True))
                    replies(sock, proto, 1)
                sock.sendall(frame)
                got = replies(sock, proto, 1)
                assert got[-1].type is not Msg.ERROR, (frame[:60], got[-1].body)
                if expected is not None:
                    rows = [m for m in got if m.type in (Msg.RESULT, Msg.ROWS)]
                    body = rows[0].body[1] if rows[0].type is Msg.RESULT else rows[0].body
                    assert body[0][0][0] == expected
                if begin:
                    sock.sendall(encode_frame(Msg.COMMIT, None))
                    assert replies(sock, proto, 1)[-1].type is Msg.COMPLETE
        # The same statements known short (in the event loop), then with a big value: cut
        # off there ("too big" is TooLong) and run again in a thread, never an error.
        for sql, small, large, expected in (
                ("SELECT length(randomblob(?))", 10, big, big),
                ("SELECT length(b) FROM blobs WHERE id = ?", 1, 2, big),
                ("SELECT b FROM blobs WHERE id = ?", 1, 2, None)):
            sock.sendall(b"".join(query(sql, params=(small,)) for _ in range(30)))
            replies(sock, proto, 30)
            sock.sendall(query(sql, params=(large,)) + query(sql, params=(small,)))
            got = [m for m in replies(sock, proto, 2) if m.type is not Msg.NOTICE]
            assert [m.type for m in got] == [Msg.RESULT, Msg.RESULT], got
            if expected is not None:
                assert got[0].body[1][0][0][0] == expected
        # A cursor opened in the event loop on small rows (batch of 1), the big row fetched
        # later, after more inline calls, in a thread.
        sql = "SELECT b FROM blobs WHERE id <= ? ORDER BY id"
        sock.sendall(b"".join(query(sql, params=(1,)) for _ in range(30)))
        replies(sock, proto, 30)
        sock.sendall(encode_frame(Msg.QUERY, (5, sql, (2,), False, 1)))
        assert replies(sock, proto, 1)[-1].type is Msg.SUSPENDED
        warm()
        sock.sendall(encode_frame(Msg.FETCH, (5, 10)))
        got = replies(sock, proto, 1)
        assert got[-1].type is Msg.COMPLETE, got[-1].body
        assert [len(r[0]) for m in got if m.type is Msg.ROWS for chunk in m.body
                for r in chunk] == [big]
        # Another session, on the pooled connections this one warmed.
        with server.connect() as other:
            other.autocommit = True
            assert other.execute("SELECT length(b) FROM blobs WHERE id = 2").fetchone() == (big,)
            assert len(other.execute("SELECT b FROM blobs WHERE id = 2").fetchone()[0]) == big
    no_internal_errors(server)


COUNT = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
         "SELECT count(*) FROM c")


def test_a_known_short_statement_turned_long_never_stalls_the_loop(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(make_db())
    worst: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with server.connect() as p:
            p.autocommit = True
            while not stop.is_set():
                t0 = time.perf_counter()
                p.execute("SELECT 1").fetchone()
                worst.append(time.perf_counter() - t0)
                time.sleep(0.002)

    sock, proto = raw(server)
    with sock:
        t = threading.Thread(target=probe)
        t.start()
        try:
            for _ in range(3):
                # Short many times (known short, in the event loop, limits left in place),
                # then the same statement long: cut off after a few ms, run in a thread.
                for _ in range(30):
                    sock.sendall(query(COUNT, params=(3,)))
                    replies(sock, proto, 1)
                sock.sendall(b"".join(query(COUNT, params=(n,), begin=b)
                                      for n, b in ((3, False), (2_000_000, False), (3, True),
                                                   (2_000_000, True))))
                got = replies(sock, proto, 4)
                assert [m.body[1][0][0][0] for m in got if m.type is Msg.RESULT] == \
                    [3, 2_000_000, 3, 2_000_000]
                sock.sendall(encode_frame(Msg.ROLLBACK, None))
                replies(sock, proto, 1)
        finally:
            stop.set()
            t.join(30)
    assert len(worst) > 20
    # A stalled loop is the whole long statement (hundreds of ms); a cut-off one is ~ms.
    assert max(worst) < 0.25, sorted(worst)[-5:]
    no_internal_errors(server)
