"""The web page keeps the server's rules: IP access rules (same audit line as the database
port), a Host check, a CSP without 'unsafe-inline', HSTS over HTTPS, and the security
headers on redirects too (the login's, which sets the cookie, included)."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import casemate
from tests.conftest import ADMIN_PASSWORD, HAVE_V6
from tests.web import prepare_web_db, web_url
from tests.web.test_web_http import Web, audit_events, start

SECURITY_HEADERS = ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy",
                    "Content-Security-Policy", "Cache-Control")





def deny_rules(db: Any, *nets: str) -> None:
    with open(db / "casemate.toml", "a", encoding="utf-8") as fh:
        for net in nets:
            fh.write(f'\n[[access.rules]]\naction = "deny"\nfrom = "{net}"\n')


def test_denied_address_is_refused_by_both_listeners(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    hosts = ["127.0.0.1", "::1"] if HAVE_V6 else ["127.0.0.1"]
    db = prepare_web_db(make_db, listen=("admin_web", "listen", hosts))
    deny_rules(db, "127.0.0.0/8", *(["::1/128"] if HAVE_V6 else []))
    extra: tuple[str, ...] = sum((("--host", h) for h in hosts), ())
    server = server_factory(db, extra=extra)
    url = web_url(server)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    for host in hosts:
        with pytest.raises(casemate.OperationalError) as e:
            casemate.connect(host=host, port=server.port, user="admin",
                             password=ADMIN_PASSWORD, reconnect_attempts=0)
        assert e.value.code == "28000"
        shown = f"[{host}]" if ":" in host else host
        web = Web(f"http://{shown}:{port}/")
        for r in (web.get("/login"), web.login()):
            assert r.status == 403 and "access rules" in r.text
            assert r.cookie() is None and "password" not in r.text
    events = audit_events(db)
    assert not [e for e in events if e["event"] == "login_ok"]
    refused = [e for e in events if e["event"] == "connection_refused"]
    for host in hosts:
        rule = "127.0.0.0/8" if host == "127.0.0.1" else "::1/128"
        lines = {(e["address"], e["rule"], e["channel"]) for e in refused
                 if e["address"] == host}
        assert lines == {(host, rule, "database"), (host, rule, "web")}, refused


def test_security_headers_on_every_reply_and_no_inline_code(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    _, url = start(make_db, server_factory)
    web = Web(url)
    replies = {"login redirect": web.login(), "anonymous redirect": Web(url).get("/"),
               "page": web.get("/sessions"), "not found": web.get("/nope"),
               "static": web.get("/static/live.js")}
    assert replies["login redirect"].status == 303 and replies["login redirect"].cookie()
    for name, r in replies.items():
        for h in SECURITY_HEADERS:
            assert r.headers.get(h), (name, h)
        csp = r.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp, name
        assert "Strict-Transport-Security" not in r.headers  # plain HTTP on loopback
    page = replies["page"].text
    assert "<script>" not in page and "<style>" not in page and " style=" not in page
    assert "<script src=/static/live.js>" in page
    css = web.get("/static/casemate.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")


def test_hsts_over_https(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory, encrypted=True)
    assert url.startswith("https://")
    web = Web(url, cafile=server.db / "Resources" / "cert.pem", check_hostname=False)
    for r in (web.get("/login"), web.login()):
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def _get_with_host(url: str, host: str) -> int:
    m = re.match(r"http://([^/]+):(\d+)/", url)
    assert m
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=10)
    try:
        conn.putrequest("GET", "/login", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_host_header_check(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    _, url = start(make_db, server_factory)
    port = url.rsplit(":", 1)[1].strip("/")
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:1",
                 f"{socket.gethostname()}:{port}"):
        assert _get_with_host(url, host) == 200, host
    for host in ("evil.example", f"evil.example:{port}", "rebind.attacker.test:80"):
        assert _get_with_host(url, host) == 421, host


def test_web_login_ends_when_its_user_is_removed_or_moved(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory)
    for name in ("boss", "chief"):
        r = subprocess.run([sys.executable, "-m", "casemate", "user", "add", str(server.db), name,
                            "--group", "admin", "--password", "boss-secret-pw"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    boss, chief = Web(url), Web(url)
    assert boss.login("boss", "boss-secret-pw").status == 303
    assert chief.login("chief", "boss-secret-pw").status == 303
    csrf = boss.csrf()
    assert boss.get("/sessions").status == 200 and chief.get("/").status == 200
    for args in (("remove", str(server.db), "boss"), ("group", str(server.db), "chief",
                                                      "readonly")):
        r = subprocess.run([sys.executable, "-m", "casemate", "user", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = boss.post("/message", {"csrf": csrf, "text": "still here?"})  # an action: refused
    assert (r.status, r.location) == (303, "/login")
    assert boss.get("/sessions").location == "/login"
    assert chief.get("/").location == "/login"
    ended = [e for e in audit_events(server.db) if e["event"] == "disconnect"
             and e.get("channel") == "web"]
    assert {e["user"] for e in ended} == {"boss", "chief"}


def test_parallel_web_guesses_are_not_faster(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    step = 0.4
    _, url = start(make_db, server_factory, after=("access", "throttle_after_failures", 1),
                   base=("access", "throttle_base_delay_seconds", step),
                   cap=("access", "throttle_max_delay_seconds", step),
                   timeout=("limits", "login_timeout_seconds", 3))
    times: list[float] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def guess() -> None:
        r = Web(url).login("admin", "wrong-guess")
        with lock:
            if "Wrong user name or password" in r.text:
                times.append(time.monotonic() - t0)
    threads = [threading.Thread(target=guess) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    times.sort()
    assert 2 <= len(times) <= 3 / step + 3, times  # the others: "Too many login attempts"
    for i, t in enumerate(times[2:], start=2):
        assert t >= (i - 1) * step * 0.9, times
