"""The web administration page in a real headless Chromium (Debian's, driven by Playwright).

The browser trusts exactly the database's key (``--ignore-certificate-errors-spki-list``),
not every certificate, so HTTPS is checked for real.

``CASEMATE_WRITE_SCREENSHOT=1 pytest tests/web/test_browser.py`` rewrites
``docs/admin-dashboard.png``; without it the tree is left alone.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the Python package playwright is not installed (pip install playwright; "
           "the browser is Debian's chromium, never 'playwright install')")

from cryptography.hazmat.primitives import serialization  # noqa: E402

import casemate  # noqa: E402
from casemate import tls  # noqa: E402
from casemate.errors import Codes  # noqa: E402
from tests.conftest import ADMIN_PASSWORD  # noqa: E402
from tests.web import free_port, prepare_web_db, web_url  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin-dashboard.png"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; tools/install-test-deps.sh)")

expect = sync_api.expect


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


def spki_pin(db: Path) -> str:
    """Chromium's form of the key fingerprint: base64 of SHA-256 of the SubjectPublicKeyInfo."""
    cert = tls.load_chain(db / "Resources" / "cert.pem")[0]
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def launch(playwright: Any, db: Path | None = None) -> Any:
    """A browser trusting only the key of ``db`` (when given)."""
    args = list(ARGS)
    if db is not None:
        args.append("--ignore-certificate-errors-spki-list=" + spki_pin(db))
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args, timeout=30_000)


def log_in(page: Any, url: str, password: str = ADMIN_PASSWORD) -> None:
    page.goto(url + "login")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def session_row(page: Any, conn: casemate.Connection) -> Any:
    return page.locator(f"#sessions tr[data-session='{conn.session_id}']")


def test_encrypted_server_sessions_drop_message_settings(make_db, server_factory, playwright) -> None:  # type: ignore[no-untyped-def]
    db = prepare_web_db(make_db, encrypted=True, name="Accounts")
    server = server_factory(db)
    url = web_url(server)
    assert url.startswith("https://127.0.0.1:")
    toml = db / "casemate.toml"
    original = toml.read_text(encoding="utf-8")

    # A browser that does not know the key refuses the page: it is real HTTPS.
    stranger = launch(playwright)
    try:
        with pytest.raises(sync_api.Error, match="ERR_CERT"):
            stranger.new_page().goto(url)
    finally:
        stranger.close()

    browser = launch(playwright, db)
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    a = server.connect(program="billing", reconnect_attempts=0)
    b = server.connect(program="warehouse")
    try:
        page.goto(url)
        assert page.url == url + "login"  # not logged in: sent to the login page
        expect(page.locator("h1")).to_have_text("Accounts: administration")
        log_in(page, url, "not-the-password")
        expect(page.locator("#error")).to_have_text("Wrong user name or password.")
        assert page.url == url + "login" and context.cookies() == []
        log_in(page, url)
        assert page.url == url
        (cookie,) = context.cookies()
        assert cookie["name"] == "casemate_admin"
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts

        a.execute("SELECT 1")
        b.execute("SELECT 1")
        # Dashboard: the status, refreshed every 2 s without reloading the page.
        status = page.locator("#live #status")
        expect(status).to_contain_text("encrypted (TLS 1.2 minimum)")
        expect(status.locator("tr", has_text="Sessions").locator("td")).to_have_text("2")
        if os.environ.get("CASEMATE_WRITE_SCREENSHOT") == "1":
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        with server.connect(program="third") as c:
            c.execute("SELECT 1")
            expect(status.locator("tr", has_text="Sessions").locator("td")).to_have_text(
                "3", timeout=5000)

        # Sessions: one row each, encryption column green "encrypted".
        page.click("nav >> text=Sessions")
        rows = page.locator("#sessions tr[data-session]")
        expect(rows).to_have_count(2)
        expect(page.locator("#sessions td.enc")).to_have_count(2)
        expect(page.locator("#sessions td.plain")).to_have_count(0)
        expect(session_row(page, a)).to_contain_text("billing")
        expect(session_row(page, a).locator("td.enc")).to_have_text("encrypted")

        # Drop a: its row goes, its next statement fails, b is untouched.
        page.once("dialog", lambda d: d.accept())  # "Drop session N of ...?"
        session_row(page, a).get_by_role("button", name="Drop").click()
        expect(session_row(page, a)).to_have_count(0, timeout=5000)
        expect(rows).to_have_count(1)
        with pytest.raises(casemate.OperationalError, match="dropped by administrator"):
            a.execute("SELECT 1")
        assert b.execute("SELECT 2").fetchone() == (2,)

        # A message reaches the remaining client as a NOTICE.
        page.fill("input[name=text]", "Maintenance at 18:00")
        page.get_by_role("button", name="Send").click()
        page.wait_for_load_state()
        b.execute("SELECT 1")
        assert (Codes.ADMIN_MESSAGE, "message from admin: Maintenance at 18:00") in b.notices

        # Settings: untick the box, Save: the file changes and every page says restart.
        page.click("nav >> text=Settings")
        box = page.locator("#encrypt")
        expect(page.locator("label", has=box)).to_have_text(
            re.compile(r"Encrypt Client/Server Connections"))
        expect(box).to_be_checked()
        expect(page.locator("#restart-banner")).to_have_count(0)
        box.uncheck()
        page.click("#save")
        page.wait_for_load_state()
        expect(page.locator("#restart-banner")).to_contain_text("restart the server to apply")
        expect(page.locator("#encrypt")).not_to_be_checked()
        assert "encrypt_client_server_connections = false" in toml.read_text(encoding="utf-8")
        page.click("nav >> text=Dashboard")
        expect(page.locator("#restart-banner")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("encrypted")  # not applied before restart
        # Tick it again: the file is as the server runs it, no restart pending.
        page.click("nav >> text=Settings")
        page.check("#encrypt")
        page.click("#save")
        page.wait_for_load_state()
        expect(page.locator("#restart-banner")).to_have_count(0)
        assert toml.read_text(encoding="utf-8") == original

        # A bad value is shown and nothing is written.
        page.fill("input[name=port]", "99999")
        page.click("#save")
        expect(page.locator("#error")).to_contain_text("network.port = 99999 is not valid")
        assert toml.read_text(encoding="utf-8") == original

        # Log out: the page is closed again.
        page.get_by_role("button", name=re.compile("Log out admin")).click()
        page.wait_for_load_state()
        assert page.url == url + "login"
        page.goto(url + "sessions")
        assert page.url == url + "login"
    finally:
        a.close()
        b.close()
        context.close()
        browser.close()


def test_plain_server_then_encryption_switched_on_from_the_page(make_db, server_factory, playwright) -> None:  # type: ignore[no-untyped-def]
    # Fixed ports, so that the restarted server is at the same addresses.
    port, web_port = free_port(), free_port()
    db = prepare_web_db(make_db, web_port=web_port)
    server = server_factory(db, port=port)
    url = web_url(server)
    assert url == f"http://127.0.0.1:{web_port}/"  # plain database on loopback: HTTP
    browser = launch(playwright, db)
    page = browser.new_page()
    a = server.connect(program="billing")
    b = server.connect(program="warehouse")
    try:
        for conn in (a, b):
            conn.execute("SELECT 1")
            conn.commit()  # a restart with a transaction open is reported, not hidden
        assert not a.security.encrypted
        log_in(page, url)
        page.click("nav >> text=Sessions")
        expect(page.locator("#sessions tr[data-session]")).to_have_count(2)
        expect(page.locator("#sessions td.plain")).to_have_count(2)
        expect(page.locator("#sessions td.enc")).to_have_count(0)
        expect(session_row(page, a).locator("td.plain")).to_have_text("plain")

        page.click("nav >> text=Settings")
        expect(page.locator("#encrypt")).not_to_be_checked()
        page.check("#encrypt")
        page.click("#save")
        page.wait_for_load_state()
        expect(page.locator("#restart-banner")).to_contain_text("restart the server to apply")
        assert "encrypt_client_server_connections = true" in (db / "casemate.toml").read_text(
            encoding="utf-8")
        page.click("nav >> text=Dashboard")
        expect(page.locator("#status")).to_contain_text("plain")  # until the restart

        # Restart: the setting applies; the clients reconnect by themselves, encrypted,
        # and the page is now HTTPS (same key, which the browser trusts).
        server.stop()
        server = server_factory(db, port=port)
        url = web_url(server)
        assert url == f"https://127.0.0.1:{web_port}/"
        for conn in (a, b):
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.generation == 1 and conn.security.encrypted
        page.goto(url)
        assert page.url == url + "login"  # logins do not survive a restart
        log_in(page, url)
        page.click("nav >> text=Sessions")
        expect(page.locator("#sessions td.enc")).to_have_count(2)
        expect(page.locator("#sessions td.plain")).to_have_count(0)
        expect(session_row(page, a)).to_contain_text("billing")
        expect(page.locator("#restart-banner")).to_have_count(0)
        expect(page.locator("#live")).to_be_visible()
    finally:
        a.close()
        b.close()
        browser.close()
