"""The web administration page: HTTP-level checks and a real headless Chromium (Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

import casemate
from tests.conftest import ADMIN_PASSWORD, set_setting

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def web_server(make_db, server_factory, encrypted: bool = False):  # type: ignore[no-untyped-def]
    db = make_db(encrypted=encrypted)
    set_setting(db, "enabled", "true")
    text = (db / "casemate.toml").read_text()
    # [admin_web] port is the second "port = ..." line (after [network]).
    head, sep, tail = text.partition("[admin_web]")
    (db / "casemate.toml").write_text(head + sep + tail.replace("port = 19813", "port = 0", 1))
    subprocess.run([sys.executable, "-m", "casemate", "user", "add", str(db), "clerk",
                    "--group", "readwrite", "--password", "clerk-pw"], check=True,
                   capture_output=True)
    server = server_factory(db)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(r"Web administration on (\S+)", server.log())
        if m:
            return server, m.group(1)
        time.sleep(0.05)
    raise AssertionError("no web URL in the server output:\n" + server.log())


class Browserless:
    """urllib with cookies, not following redirects (we check them)."""

    def __init__(self, base: str, cafile: Path | None = None) -> None:
        self.base = base
        self.jar = CookieJar()
        ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        if ctx is not None:
            ctx.check_hostname = False  # the certificate names 127.0.0.1 as an IP SAN anyway
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if ctx is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self.opener = urllib.request.build_opener(*handlers)

    def request(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str, Any]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self.opener.open(self.base.rstrip("/") + path, body, timeout=10) as r:
                return r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.headers

    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> tuple[int, str, Any]:
        return self.request("/login", {"user": user, "password": password})

    def csrf(self) -> str:
        _, page, _ = self.request("/sessions")
        m = re.search(r"name=csrf value=(\S+?)>", page)
        assert m, page
        return m.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_login_required_and_refusals(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = web_server(make_db, server_factory)
    assert url.startswith("http://127.0.0.1:")  # loopback and not encrypted: plain HTTP
    b = Browserless(url)
    status, _, headers = b.request("/")
    assert status == 303 and headers["Location"] == "/login"
    status, page, _ = b.login(password="wrong")
    assert status == 401 and "Wrong user name or password." in page
    status, page, _ = b.login("clerk", "clerk-pw")
    assert status == 401 and "not in the admin group" in page
    assert b.request("/api/status")[0] == 303
    status, _, headers = b.login()
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    status, body, _ = b.request("/api/status")
    assert status == 200 and '"mode": "plain"' in body
    # Every action needs the login's CSRF token.
    assert b.request("/message", {"text": "hi"})[0] == 403
    assert b.request("/message", {"text": "hi", "csrf": "forged"})[0] == 403
    assert b.request("/message", {"text": "hi", "csrf": b.csrf()})[0] == 303
    audit = (server.db / "Logs" / "audit.jsonl").read_text()
    assert '"channel": "web"' in audit and "clerk-pw" not in audit


def test_settings_page_writes_the_file_and_shows_the_banner(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = web_server(make_db, server_factory)
    b = Browserless(url)
    b.login()
    toml = server.db / "casemate.toml"
    before = toml.read_text()
    bad = {"csrf": b.csrf(), "publication_name": "db", "listen": "127.0.0.1", "port": "99999",
           "min_tls_version": "1.2"}
    status, page, _ = b.request("/settings", bad)
    assert status == 400 and "network.port = 99999" in page
    assert toml.read_text() == before  # nothing written
    good = {**bad, "port": "19900", "encrypt_client_server_connections": "on"}
    assert b.request("/settings", good)[0] == 303
    text = toml.read_text()
    assert "encrypt_client_server_connections = true" in text and "port = 19900" in text
    assert "# Encrypt all client/server connections" in text  # comments kept
    _, page, _ = b.request("/")
    assert "restart the server to apply" in page


def test_https_on_an_encrypted_server_and_certificate_pages(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    server, url = web_server(make_db, server_factory, encrypted=True)
    assert url.startswith("https://")
    b = Browserless(url, cafile=server.db / "Resources" / "cert.pem")
    status, _, headers = b.login()
    assert status == 303 and "Secure" in headers["Set-Cookie"]
    _, page, _ = b.request("/certificate")
    from casemate import tls
    info = tls.inspect_cert(tls.load_chain(server.db / "Resources" / "cert.pem")[0])
    assert info.sha256 in page and info.spki_sha256 in page
    status, csr_pem, _ = b.request("/certificate/csr", {"csrf": b.csrf()})
    assert status == 200
    from cryptography import x509
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert (server.db / "Resources" / "request.key").exists()


# -- a real browser ------------------------------------------------------------------

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian's chromium is not installed "
                                           "(tools/install-test-deps.sh installs it)")


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _login(page: Any, url: str, password: str = ADMIN_PASSWORD) -> None:
    page.goto(url + "login")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


@needs_chromium
def test_browser_sessions_drop_and_encryption_box(make_db, server_factory, browser) -> None:  # type: ignore[no-untyped-def]
    server, url = web_server(make_db, server_factory, encrypted=True)
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 800})
    page = ctx.new_page()
    # A wrong password fails.
    _login(page, url, "not-the-password")
    assert "Wrong user name or password." in page.inner_text("#error")
    _login(page, url)
    assert page.url.rstrip("/") == url.rstrip("/")
    a = server.connect(program="billing", reconnect_attempts=0)
    b = server.connect(program="warehouse")
    a.execute("SELECT 1")
    b.execute("SELECT 1")
    page.goto(url + "sessions")
    rows = page.locator("#sessions tr[data-session]")
    assert rows.count() == 2
    assert page.locator("#sessions td.enc").count() == 2   # both sessions encrypted
    assert page.locator("#sessions td.plain").count() == 0
    page.goto(url)
    page.wait_for_timeout(2500)  # one live refresh
    if os.environ.get("CASEMATE_WRITE_SCREENSHOT") == "1":
        page.screenshot(path=str(DOCS / "admin-dashboard.png"), full_page=True)
    assert "encrypted" in page.inner_text("#status")
    # Drop session a from the sessions page.
    page.goto(url + "sessions")
    page.locator(f"#sessions tr[data-session='{a.session_id}'] button").click()
    page.wait_for_load_state()
    assert page.locator(f"#sessions tr[data-session='{a.session_id}']").count() == 0
    time.sleep(0.2)
    with pytest.raises(casemate.OperationalError) as e:
        a.execute("SELECT 1")
    assert "dropped by administrator" in str(e.value)
    assert b.execute("SELECT 2").fetchone() == (2,)
    # Untick the encryption box: the file changes and the restart banner appears.
    page.goto(url + "settings")
    assert page.is_checked("#encrypt")
    page.uncheck("#encrypt")
    page.click("#save")
    page.wait_for_load_state()
    assert "restart the server to apply" in page.inner_text("#restart-banner")
    assert "encrypt_client_server_connections = false" in (
        server.db / "casemate.toml").read_text()
    a.close()
    b.close()
    ctx.close()


@needs_chromium
def test_browser_plain_server_shows_plain_sessions(make_db, server_factory, browser) -> None:  # type: ignore[no-untyped-def]
    server, url = web_server(make_db, server_factory)
    page = browser.new_page()
    _login(page, url)
    with server.connect() as c1, server.connect() as c2:
        c1.execute("SELECT 1")
        c2.execute("SELECT 1")
        page.goto(url + "sessions")
        assert page.locator("#sessions td.plain").count() == 2
        assert page.locator("#sessions td.enc").count() == 0
        # Tick the box this time.
        page.goto(url + "settings")
        page.check("#encrypt")
        page.click("#save")
        page.wait_for_load_state()
        assert page.locator("#restart-banner").count() == 1
        assert "encrypt_client_server_connections = true" in (
            server.db / "casemate.toml").read_text()
