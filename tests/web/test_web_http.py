"""The web administration page over plain HTTP requests (no browser), against real servers.

Each test starts ``casemate serve`` with ``[admin_web] enabled = true`` on a
free port and talks to it with :mod:`http.client`; TLS is verified against the
database's own ``Resources/cert.pem``.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import casemate
from casemate import tls
from casemate.errors import Codes
from casemate.settings import load_settings
from tests.conftest import ADMIN_PASSWORD
from tests.web import CLERK_PASSWORD, prepare_web_db, web_url

LOGIN_PAGE = "/login"
PROTECTED_GETS = ["/", "/sessions", "/settings", "/certificate", "/api/status", "/api/sessions",
                  "/?fragment=1", "/sessions?fragment=1", "/api/history?since=0"]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def cookie(self) -> Any:
        """The casemate_admin Morsel of Set-Cookie, or None."""
        for value in self.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            if "casemate_admin" in jar:
                return jar["casemate_admin"]
        return None


class Web:
    """A tiny HTTP(S) client with one cookie; a fresh connection per request, never redirected."""

    def __init__(self, url: str, cafile: Path | None = None, check_hostname: bool = True) -> None:
        u = urllib.parse.urlsplit(url)
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname or "", u.port or 0
        self.ctx: ssl.SSLContext | None = None
        if self.https:
            self.ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            self.ctx.check_hostname = check_hostname
        self.token = ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                token: str | None = None) -> Reply:
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=15,
                                               context=self.ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        headers = {}
        token = self.token if token is None else token
        if token:
            headers["Cookie"] = f"casemate_admin={token}"
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read())
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str] | None = None) -> Reply:
        return self.request("POST", path, form or {})

    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> Reply:
        r = self.request("POST", "/login", {"user": user, "password": password}, token="")
        morsel = r.cookie()
        if morsel is not None and morsel.value:
            self.token = morsel.value
        return r

    def csrf(self, page: str = "/sessions") -> str:
        r = self.get(page)
        assert r.status == 200, (r.status, r.text)
        tokens = set(re.findall(r"name=csrf value=([^\s>]+)", r.text))
        assert len(tokens) == 1, tokens
        return tokens.pop()


def start(make_db: Any, server_factory: Any, **kw: Any) -> tuple[Any, str]:
    server = server_factory(prepare_web_db(make_db, **kw))
    return server, web_url(server)


def audit_events(db: Path) -> list[dict[str, Any]]:
    path = db / "Logs" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def settings_form(csrf: str, **changes: str) -> dict[str, str]:
    """The settings form as the page submits it for a default database (boxes unticked)."""
    form = {"csrf": csrf, "publication_name": "web-db", "listen": "127.0.0.1",
            "port": "19812", "min_tls_version": "1.2"}
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


# -- authentication ----------------------------------------------------------------------

def test_login_required_refusals_throttling_and_audit(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory, clerk=True, throttle=(
        "access", "throttle_base_delay_seconds", 0.8), cap=(
        "access", "throttle_max_delay_seconds", 0.8))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)  # loopback, plain: HTTP
    web = Web(url)
    for path in PROTECTED_GETS:
        r = web.get(path)
        assert (r.status, r.location) == (303, LOGIN_PAGE), path
        assert b"publication" not in r.body and b"csrf" not in r.body
    # A POST without a login does nothing and is sent to the login page.
    with server.connect(reconnect_attempts=0) as c:
        r = web.post(f"/sessions/{c.session_id}/drop", {"csrf": "x"})
        assert (r.status, r.location) == (303, LOGIN_PAGE)
        assert c.execute("SELECT 1").fetchone() == (1,)
    r = web.get("/login")
    assert r.status == 200 and 'name=password type=password' in r.text
    assert r.cookie() is None

    # Right password, wrong group: refused, no cookie.
    r = web.login("clerk", CLERK_PASSWORD)
    assert r.status == 401 and "not in the admin group" in r.text
    assert r.cookie() is None and web.token == ""

    # Unknown user and wrong password: the same answer. The first failures are quick...
    timings = []
    for user, pw in [("nobody", "x"), ("admin", "wrong-1"), ("admin", "wrong-2")]:
        t0 = time.monotonic()
        r = web.login(user, pw)
        timings.append(time.monotonic() - t0)
        assert r.status == 401 and r.cookie() is None
        assert re.search(r'<p class=err id=error>Wrong user name or password\.</p>', r.text)
    assert max(timings) < 0.6, timings
    # ...then each attempt waits (access.throttle_*), even the right password.
    t0 = time.monotonic()
    assert web.login("admin", "wrong-3").status == 401
    assert time.monotonic() - t0 >= 0.75
    t0 = time.monotonic()
    r = web.login()
    assert time.monotonic() - t0 >= 0.75
    assert (r.status, r.location) == (303, "/") and web.token
    assert web.get("/").status == 200
    # A success forgets the failures.
    t0 = time.monotonic()
    assert Web(url).login("admin", "wrong-4").status == 401
    assert time.monotonic() - t0 < 0.6

    events = audit_events(server.db)
    web_events = [e for e in events if e.get("channel") == "web"]
    failed = [e["user"] for e in web_events if e["event"] == "login_failed"]
    assert failed == ["nobody", "admin", "admin", "admin", "admin"]
    assert [e["user"] for e in web_events if e["event"] == "login_ok"] == ["admin"]
    refused = [e for e in events if e["event"] == "permission_refused"]
    assert [e["user"] for e in refused] == ["clerk"]
    text = (server.db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    for secret in (CLERK_PASSWORD, ADMIN_PASSWORD, "wrong-1", web.token):
        assert secret not in text


def test_cookie_flags_logout_and_headers_over_http(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory,
                        minutes=("admin_web", "session_minutes", 7))
    web = Web(url)
    r = web.login()
    morsel = r.cookie()
    assert morsel is not None and len(morsel.value) >= 32
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert not morsel["secure"]  # plain HTTP on loopback: a Secure cookie would be dropped
    assert morsel["path"] == "/" and morsel["max-age"] == str(7 * 60)
    page = web.get("/")
    assert page.status == 200
    h = page.headers
    assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
    assert h["Cache-Control"] == "no-store" and "default-src 'none'" in h[
        "Content-Security-Policy"]
    # Two logins get different cookies and CSRF tokens.
    other = Web(url)
    other.login()
    assert other.token != web.token and other.csrf() != web.csrf()
    # Log out: the old cookie no longer works (it is forgotten by the server, not only
    # deleted in the browser).
    token = web.token
    r = web.post("/logout", {"csrf": web.csrf()})
    assert (r.status, r.location) == (303, LOGIN_PAGE)
    assert r.cookie() is not None and r.cookie().value == ""
    assert web.request("GET", "/", token=token).status == 303
    assert other.get("/").status == 200  # the other login is unaffected


def test_every_post_needs_the_csrf_token(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory)
    web = Web(url)
    web.login()
    foreign = Web(url)
    foreign.login()
    foreign_csrf = foreign.csrf()  # a valid token, but of another login
    toml = server.db / "casemate.toml"
    before = toml.read_bytes()
    cert_before = (server.db / "Resources" / "cert.pem").read_bytes()
    with server.connect(reconnect_attempts=0) as c:
        c.execute("SELECT 1")
        posts = {
            "/logout": {},
            f"/sessions/{c.session_id}/drop": {},
            "/message": {"text": "forged"},
            "/settings": settings_form("", encrypt_client_server_connections="on", port="1"),
            "/certificate/generate": {},
            "/certificate/csr": {},
        }
        for path, form in posts.items():
            for bad in (None, "", "forged-token", foreign_csrf):
                data = {k: v for k, v in form.items() if k != "csrf"}
                if bad is not None:
                    data["csrf"] = bad
                r = web.post(path, data)
                assert r.status == 403, (path, bad, r.status)
                assert "CSRF" in r.text
        # Nothing happened: the session lives, got no message, files are unchanged.
        assert c.execute("SELECT 2").fetchone() == (2,)
        assert not [n for n in c.notices if n[0] == Codes.ADMIN_MESSAGE]
    assert toml.read_bytes() == before
    assert (server.db / "Resources" / "cert.pem").read_bytes() == cert_before
    assert not (server.db / "Resources" / "request.key").exists()
    assert web.get("/").status == 200  # the login survived the forged logout
    # A form whose CSRF token is in the query string instead of the body is refused too.
    r = web.request("POST", f"/message?csrf={web.csrf()}", {"text": "x"})
    assert r.status == 403


# -- settings -----------------------------------------------------------------------------

def test_settings_validation_write_and_restart_banner(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory)
    toml = server.db / "casemate.toml"
    original = toml.read_text(encoding="utf-8")
    pub = re.search(r'(?m)^publication_name = "(.*)"$', original)
    assert pub
    web = Web(url)
    web.login()
    page = web.get("/settings").text
    assert 'id=encrypt>' in page or "id=encrypt " in page  # unticked on a plain database
    assert "id=encrypt checked" not in page
    assert 'id=restart-banner' not in page
    csrf = web.csrf("/settings")
    base = settings_form(csrf, publication_name=pub.group(1))

    bad_values = [({"port": "99999"}, "network.port = 99999 is not valid"),
                  ({"port": "x"}, "invalid literal"),
                  ({"listen": " , "}, "network.listen"),
                  ({"min_tls_version": "1.1"}, "network.min_tls_version = '1.1'"),
                  ({"publication_name": "  "}, "network.publication_name")]
    for change, message in bad_values:
        r = web.post("/settings", {**base, **change})
        assert r.status == 400, change
        error = re.search(r"<p class=err id=error>(.*?)</p>", r.text)
        assert error and message in html.unescape(error.group(1)), (change, r.text[:2000])
        assert toml.read_text(encoding="utf-8") == original  # nothing written
    assert 'id=restart-banner' not in web.get("/").text
    assert json.loads(web.get("/api/status").body)["restart_pending"] is False

    r = web.post("/settings", {**base, "encrypt_client_server_connections": "on",
                               "min_tls_version": "1.3"})
    assert (r.status, r.location) == (303, "/settings")
    changed = toml.read_text(encoding="utf-8")
    diff = {(a, b) for a, b in zip(original.splitlines(), changed.splitlines(), strict=True)
            if a != b}
    assert diff == {("encrypt_client_server_connections = false",
                     "encrypt_client_server_connections = true"),
                    ('min_tls_version = "1.2"', 'min_tls_version = "1.3"')}
    for path in ("/", "/sessions", "/settings", "/certificate"):
        page = web.get(path).text
        assert re.search(r"id=restart-banner>[^<]*restart the server to apply", page), path
    assert "id=encrypt checked" in web.get("/settings").text  # shows the file, not the server
    status = json.loads(web.get("/api/status").body)
    assert status["restart_pending"] is True and status["mode"] == "plain"  # not applied yet
    assert "restart the server to apply" in server.log()

    # Back to the values the server runs with: no restart pending any more.
    assert web.post("/settings", base).status == 303
    assert toml.read_text(encoding="utf-8") == original
    assert 'id=restart-banner' not in web.get("/").text
    assert json.loads(web.get("/api/status").body)["restart_pending"] is False
    commands = [e.get("command") for e in audit_events(server.db) if e["event"] == "admin"]
    assert commands == ["settings", "settings"]


def test_settings_saved_over_a_hand_edited_file(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    # An administrator wrote listen over several lines: saving the form used to replace its
    # first line only, leaving a file no server could read (and the page refused to save).
    db = prepare_web_db(make_db, name="web-db")
    toml = db / "casemate.toml"
    text = toml.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^listen = \["127.0.0.1"\]$', 'listen = [\n  "127.0.0.1",\n  "::1",\n]',
                  text, count=1)
    toml.write_text(text, encoding="utf-8")
    server = server_factory(db)
    web = Web(web_url(server))
    web.login()
    r = web.post("/settings", settings_form(web.csrf("/settings"), listen="127.0.0.1"))
    assert (r.status, r.location) == (303, "/settings"), r.text[:2000]
    saved = load_settings(toml)
    assert saved.network.listen == ("127.0.0.1",)
    assert saved.admin_web.listen == ("127.0.0.1",)
    assert '  "::1",' not in toml.read_text(encoding="utf-8")
    server.stop()
    restarted = server_factory(db)
    with restarted.connect() as c:
        assert c.execute("SELECT 3").fetchone() == (3,)


def test_settings_page_escapes_the_file_values(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    evil = '"><script>alert(1)</script>'
    server, url = start(make_db, server_factory, pub=("network", "publication_name", evil))
    web = Web(url)
    assert evil not in web.get("/login").text
    web.login()
    page = web.get("/settings").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "&quot;&gt;" in page


# -- status, sessions, drop, message ----------------------------------------------------

def test_api_status_sessions_drop_and_message(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory)
    web = Web(url)
    web.login()
    with server.connect(program="billing", reconnect_attempts=0) as a, \
            server.connect(program="<img src=x onerror=alert(1)>") as b:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        a_id = a.session_id
        r = web.get("/api/status")
        assert r.status == 200 and r.headers.get_content_type() == "application/json"
        st = json.loads(r.body)
        assert st["mode"] == "plain" and st["min_tls_version"] is None
        assert st["sessions"] == 2 and st["accepting"] is True
        assert st["publication"] == server.db.name and st["version"] == casemate.__version__
        assert st["certificate_sha256"] is None  # no TLS on a plain server
        history = json.loads(web.get("/api/history?since=0").body)
        assert history["interval"] == 2.0 and len(history["time"]) == len(history["sessions"])
        assert web.get("/api/history?since=soon").status == 400
        # The page's own files: the chart library is shipped, a path is never read.
        assert b"uPlot" in web.get("/static/uPlot.iife.min.js").body
        assert web.get("/static/..%2F..%2Fweb.py").status == 404
        assert web.get("/static/README.md").status == 404
        rows = json.loads(web.get("/api/sessions").body)
        by_id = {row["id"]: row for row in rows}
        assert set(by_id) == {a.session_id, b.session_id}
        assert by_id[a.session_id]["program"] == "billing"
        assert by_id[a.session_id]["user"] == "admin"
        assert all(row["encrypted"] is False and row["tls_version"] is None for row in rows)

        page = web.get("/sessions").text
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        plain_cells = re.findall(r"<td class=plain>plain</td>", page)
        assert len(plain_cells) == 2 and "<td class=enc>" not in page
        fragment = web.get("/sessions?fragment=1")
        assert fragment.text.startswith("<table id=sessions>") and "<nav>" not in fragment.text

        csrf = web.csrf()
        r = web.post("/message", {"csrf": csrf, "text": "Maintenance at 18:00"})
        assert (r.status, r.location) == (303, "/sessions")
        b.execute("SELECT 1")
        assert (Codes.ADMIN_MESSAGE, "message from admin: Maintenance at 18:00") in b.notices

        r = web.post(f"/sessions/{a.session_id}/drop", {"csrf": csrf})
        assert (r.status, r.location) == (303, "/sessions")
        # The session ends asynchronously (its transaction is rolled back first).
        deadline = time.monotonic() + 5
        while (ids := {row["id"] for row in json.loads(web.get("/api/sessions").body)}
               ) != {b.session_id} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ids == {b.session_id}
        with pytest.raises(casemate.OperationalError, match="dropped by administrator"):
            a.execute("SELECT 1")
        assert b.execute("SELECT 2").fetchone() == (2,)
        # Dropping a session that is gone is harmless.
        assert web.post(f"/sessions/{a.session_id}/drop", {"csrf": csrf}).status == 303
    admin = [e for e in audit_events(server.db) if e["event"] == "admin"]
    assert [(e["command"], e.get("target")) for e in admin] == [
        ("message", None), ("drop", a_id)]


def test_drop_with_a_bad_session_id_is_not_found(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory)
    web = Web(url)
    web.login()
    r = web.post("/sessions/abc/drop", {"csrf": web.csrf()})
    assert r.status in (400, 404)


# -- HTTPS and the certificate ----------------------------------------------------------

def _served_cert(url: str) -> bytes:
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((u.hostname, u.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=u.hostname) as s:
        der = s.getpeercert(binary_form=True)
    assert der
    return der


def test_https_on_an_encrypted_server_cookie_certificate_and_csr(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory, encrypted=True)
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/", url)
    resources = server.db / "Resources"
    # Plain HTTP to the HTTPS port gets no page.
    u = urllib.parse.urlsplit(url)
    plain = Web(f"http://{u.hostname}:{u.port}/")
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.get("/login")
    # The page presents the database certificate; verified with it as the only CA,
    # host name included (the certificate names 127.0.0.1).
    web = Web(url, cafile=resources / "cert.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        Web(url).get("/login")  # the system CAs do not vouch for it
    r = web.login()
    morsel = r.cookie()
    assert morsel is not None and morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"

    info = tls.inspect_cert(tls.load_chain(resources / "cert.pem")[0])
    served = hashlib.sha256(_served_cert(url)).hexdigest()
    page = web.get("/certificate").text
    norm = re.sub(r"[^0-9a-f]", "", page.lower())
    assert served in norm  # the fingerprint shown is the one of the certificate served
    assert info.sha256 in page and info.spki_sha256 in page and info.subject in page
    st = json.loads(web.get("/api/status").body)
    assert st["mode"] == "encrypted" and st["min_tls_version"] == "1.2"
    assert st["certificate_sha256"] == info.sha256 and st["key_sha256"] == info.spki_sha256
    with server.connect() as c:
        c.execute("SELECT 1")
        rows = json.loads(web.get("/api/sessions").body)
        assert [(r["encrypted"], r["tls_version"] is not None) for r in rows] == [(True, True)]
        assert re.search(r"<td class=enc title=\"TLSv1\.[23] [^\"]+\">encrypted</td>",
                         web.get("/sessions").text)

    r = web.post("/certificate/csr", {"csrf": web.csrf("/certificate")})
    assert r.status == 200 and r.headers.get_content_type() == "application/pkcs10"
    assert "attachment" in r.headers["Content-Disposition"]
    csr = x509.load_pem_x509_csr(r.body)
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn and cn[0].value == server.db.name  # the publication name
    key = serialization.load_pem_private_key((resources / "request.key").read_bytes(), None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)
    assert (resources / "request.csr").read_bytes() == r.body
    assert (resources / "cert.pem").read_bytes() == tls.load_chain(resources / "cert.pem")[
        0].public_bytes(serialization.Encoding.PEM)  # the installed certificate is untouched


def test_certificate_generate_replaces_and_reloads(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory, encrypted=True)
    resources = server.db / "Resources"
    old = tls.inspect_cert(tls.load_chain(resources / "cert.pem")[0])
    web = Web(url, cafile=resources / "cert.pem")
    web.login()
    r = web.post("/certificate/generate", {"csrf": web.csrf("/certificate")})
    assert (r.status, r.location) == (303, "/certificate")
    new = tls.inspect_cert(tls.load_chain(resources / "cert.pem")[0])
    assert new.spki_sha256 != old.spki_sha256
    assert (resources / "cert.pem.old").exists() and (resources / "key.pem.old").exists()
    web = Web(url, cafile=resources / "cert.pem")  # the page itself now serves the new one
    web.login()
    page = web.get("/certificate").text
    assert new.sha256 in page and old.sha256 not in page
    assert json.loads(web.get("/api/status").body)["certificate_sha256"] == new.sha256
    # New protocol connections get the new key at once.
    with server.connect(tls_ca=str(resources / "cert.pem")) as c:
        assert c.security.fingerprint == new.spki_sha256


def test_web_page_serves_the_regenerated_certificate(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = start(make_db, server_factory, encrypted=True)
    resources = server.db / "Resources"
    web = Web(url, cafile=resources / "cert.pem")
    web.login()
    web.post("/certificate/generate", {"csrf": web.csrf("/certificate")})
    new = tls.load_chain(resources / "cert.pem")[0]
    assert _served_cert(url) == new.public_bytes(serialization.Encoding.DER)


def test_https_when_listening_beyond_loopback(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    # 127.0.0.2 stays on this machine, but is not one of the loopback names the page trusts
    # for plain HTTP (127.0.0.1, ::1, localhost): HTTPS even though encryption is off.
    server, url = start(make_db, server_factory,
                        listen=("admin_web", "listen", ["127.0.0.2"]))
    assert re.fullmatch(r"https://127\.0\.0\.2:\d+/", url)
    web = Web(url, cafile=server.db / "Resources" / "cert.pem", check_hostname=False)
    r = web.login()
    assert r.status == 303 and r.cookie()["secure"] is True
    st = json.loads(web.get("/api/status").body)
    assert st["mode"] == "plain"  # the database connections themselves stay plain
