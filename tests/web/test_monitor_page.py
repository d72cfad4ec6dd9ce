"""The page a DBA keeps open, in headless Chromium: live graphs of the last hour drawn by
the chart library shipped in the package (no request leaves the server, nothing breaks
the Content-Security-Policy), human units, readable titles, a sessions table that fits a
1280-pixel window with its Drop buttons visible, a confirmation before a session is
dropped, and the running value beside the file's when they differ (``--port``).

``CASEMATE_WRITE_SCREENSHOT=1`` rewrites ``docs/admin-graphs.png`` and
``docs/admin-sessions.png``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.web import prepare_web_db, web_url

sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright "
                               "is not installed (pip install playwright)")

from tests.web.test_browser import CHROMIUM, launch, log_in  # noqa: E402

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
expect = sync_api.expect
DOCS = Path(__file__).resolve().parents[2] / "docs"
LONG_PROGRAM = "nightly-invoice-reconciliation-" * 4


@pytest.fixture(scope="module")
def playwright() -> Any:
    with sync_api.sync_playwright() as p:
        yield p


def _busy(server: Any, stop: threading.Event) -> None:
    with server.connect(program="load") as conn:
        while not stop.is_set():
            conn.execute("SELECT ?", ("x" * 2000,)).fetchall()
            time.sleep(0.005)


def test_live_graphs_units_sessions_and_running_values(make_db, server_factory, playwright) -> None:  # type: ignore[no-untyped-def]
    db = prepare_web_db(make_db, name="Accounts")
    server = server_factory(db)  # --port 0 overrides the file's 19812
    url = web_url(server)
    browser = launch(playwright, db)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400
            else None)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
    stop = threading.Event()
    load = threading.Thread(target=_busy, args=(server, stop), daemon=True)
    load.start()
    a = server.connect(program=LONG_PROGRAM)
    b = server.connect(program="warehouse")
    try:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        log_in(page, url)

        # Dashboard: human units and titles, then five graphs filling up every 2 s.
        status = page.locator("#status")
        expect(status.locator("tr", has_text="Up for").locator("td")).to_have_text(
            re.compile(r"^\d+(\.\d)? s$|^\d+ s$|^\d+ min( \d+ s)?$"))
        expect(status.locator("tr", has_text="Data size").locator("td")).to_have_text(
            re.compile(r"^\d+(\.\d)? (bytes|kB|MB)$"))
        expect(status.locator("tr", has_text="Restart pending").locator("td")).to_have_text("no")
        assert "_" not in status.locator("th").all_inner_texts().__str__()
        expect(page.locator("#graphs figure")).to_have_count(5)
        expect(page.locator("#graphs canvas")).to_have_count(5)
        expect(page.locator("#graphs")).to_have_attribute("data-samples", re.compile(
            r"^([3-9]|\d\d+)$"), timeout=15_000)
        history = page.evaluate("fetch('/api/history?since=0').then(r => r.json())")
        assert max(history["sessions"]) >= 3
        assert max(history["statements_per_second"]) > 10  # the load thread
        assert max(history["bytes_in_per_second"]) > 2000
        assert max(history["bytes_out_per_second"]) > 2000
        assert set(history["encrypted_percent"]) == {0.0}  # a plain server
        assert all(c >= 0 for c in history["cpu_percent"])
        later = page.evaluate(f"fetch('/api/history?since={history['time'][-1]}')"
                              ".then(r => r.json())")
        assert all(t > history["time"][-1] for t in later["time"])
        # Pointing at a graph shows its values, in units, in the legend.
        over = page.locator("#graph-bytes .u-over")
        box = over.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
        expect(page.locator("#graph-bytes .u-legend")).to_contain_text(
            re.compile(r"In\W*\d+(\.\d)? (B|kB|MB)/s"))
        if os.environ.get("CASEMATE_WRITE_SCREENSHOT") == "1":
            page.screenshot(path=str(DOCS / "admin-graphs.png"), full_page=True)

        # Sessions: readable titles; fits 1280 pixels with every Drop button in view.
        page.click("nav >> text=Sessions")
        heads = page.locator("#sessions th").all_inner_texts()
        assert heads == ["ID", "User", "Client address", "Program", "Connected for", "Idle",
                         "Encryption", "Statements", "Transaction", "Action"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        buttons = page.locator("#sessions button", has_text="Drop")
        expect(buttons).to_have_count(3)
        for k in range(3):
            box = buttons.nth(k).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1280
        row_a = page.locator(f"#sessions tr[data-session='{a.session_id}']")
        expect(row_a.locator("td").nth(3)).to_have_attribute("class", "cut")
        expect(row_a.locator("td").nth(5)).to_have_text(re.compile(r"^\d+(\.\d)? s$|min"))
        if os.environ.get("CASEMATE_WRITE_SCREENSHOT") == "1":
            page.screenshot(path=str(DOCS / "admin-sessions.png"))

        # Drop asks first: dismissed, nothing happens; accepted, the session ends.
        asked: list[str] = []

        def answer(accept: bool) -> Any:
            def handle(d: Any) -> None:
                asked.append(d.message)
                d.accept() if accept else d.dismiss()
            return handle
        page.once("dialog", answer(False))
        row_a.get_by_role("button", name="Drop").click()
        page.wait_for_timeout(500)
        assert asked and f"Drop session {a.session_id} of admin" in asked[0]
        assert "rolled back" in asked[0]
        expect(row_a).to_have_count(1)
        assert a.execute("SELECT 2").fetchone() == (2,)
        page.wait_for_timeout(2500)  # the table was refreshed: the listener still holds
        page.once("dialog", answer(True))
        row_a.get_by_role("button", name="Drop").click()
        expect(row_a).to_have_count(0, timeout=5000)
        assert len(asked) == 2

        # Settings: the file says 19812, the server runs on the port --port gave it.
        page.click("nav >> text=Settings")
        expect(page.locator("input[name=port]")).to_have_value("19812")
        expect(page.locator("#running-port")).to_have_text(f"running: {server.port}")
        expect(page.locator("#running-publication_name")).to_have_count(0)

        assert not problems, problems  # no script error, no CSP violation
        assert not outside, outside    # the chart library came from the server
    finally:
        stop.set()
        load.join(10)
        a.close()
        b.close()
        browser.close()
