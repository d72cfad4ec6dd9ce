"""The web administration page's pages and JSON: what a logged-in administrator sees.

HTML pages (the dashboard, sessions, settings, certificate and login forms),
the live fragments the pages refresh, the JSON of ``/api/...``, the static
files (stylesheet and scripts) and the human units of the tables.  Every
value from a client or the database is escaped (``_esc``), and client-chosen
strings are also cleaned of control and bidirectional characters (``_text``).
Who may see a page is decided before these run (:mod:`casemate.server.web`).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import tls
from ..settings import SettingsError, parse_settings
from ..units import human_bytes, human_duration
from .audit import clean
from .history import History
from .monitor import SESSION_COLUMNS, session_rows, status
from .webauth import WebLogin

if TYPE_CHECKING:
    from .app import Server

__all__ = ["Pages"]


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


_CSS = """body{font-family:system-ui,sans-serif;margin:0;background:#f5f6f8;color:#222}
nav{background:#1f2d3d;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}
nav form{display:inline;float:right}main{padding:1em 1.5em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccd;padding:.3em .6em}
th{background:#e8ebf0;text-align:left}.banner{background:#ffe08a;padding:.6em 1em;font-weight:bold}
.enc{color:#17703a;font-weight:bold}.plain{color:#b3261e;font-weight:bold}.err{color:#b3261e}
label{display:block;margin:.5em 0}.num{text-align:right}
#sessions{width:100%}#sessions td{white-space:nowrap}
#sessions td.cut{max-width:12em;overflow:hidden;text-overflow:ellipsis}
#sessions form{margin:0}.running{color:#8a4b08;margin-left:.8em;font-weight:bold}
#graphs{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:1em;margin-top:1.2em}
.graph{background:#fff;border:1px solid #ccd;margin:0;padding:.4em}
.graph figcaption{font-weight:bold;margin-bottom:.2em}
.u-legend,.u-legend th,.u-legend td{border:0;background:none;padding:0 .2em;font-weight:normal}"""

_LIVE_JS = """setInterval(async () => {
  const r = await fetch(location.pathname + '?fragment=1');
  if (r.ok) document.getElementById('live').innerHTML = await r.text();
}, 2000);
"""
# Served as files, so the Content-Security-Policy needs no 'unsafe-inline': an injected
# <script> or style attribute would not run even if some value escaped the escaping.
_STATIC = {"casemate.css": (_CSS, "text/css"), "live.js": (_LIVE_JS, "text/javascript")}
# Files shipped in the package (static/README.md says where the chart library comes from).
_FILES = Path(__file__).with_name("static")
_FILE_TYPES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css",
               "dashboard.js": "text/javascript", "sessions.js": "text/javascript"}
# The dashboard's graphs: (id, title); dashboard.js draws /api/history into them.
_GRAPHS = [("sessions", "Sessions"), ("encrypted", "Encrypted sessions (%)"),
           ("statements", "Statements per second"), ("bytes", "Bytes in and out per second"),
           ("cpu", "Server CPU (% of one core)")]


class Pages:
    """The GET handlers; those behind the login get the :class:`WebLogin` with the request."""

    def __init__(self, server: Server, history: History) -> None:
        self.server = server
        self.history = history

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = _STATIC.get(name)
        if found is None and name in _FILE_TYPES:  # a fixed list: no path from the request
            found = (_static_file(name), _FILE_TYPES[name])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(text=found[0], content_type=found[1])

    async def login_page(self, request: web.Request, error: str = "") -> web.Response:
        body = (f"<h1>{_esc(self.server.settings.network.publication_name)}: administration"
                f"</h1>{f'<p class=err id=error>{_esc(error)}</p>' if error else ''}"
                "<form method=post action=/login><label>User <input name=user "
                "autocomplete=username></label><label>Password <input name=password "
                "type=password autocomplete=current-password></label>"
                "<button type=submit>Log in</button></form>")
        return self.page("Log in", body, None, status=401 if error else 200)

    def page(self, title: str, body: str, login: WebLogin | None, status: int = 200,
             live: bool = False, scripts: tuple[str, ...] = (),
             styles: tuple[str, ...] = ()) -> web.Response:
        """A whole page; with ``login``, the menu, the logout form and the restart banner."""
        nav = ""
        if login is not None:
            nav = ("<nav><a href=/>Dashboard</a><a href=/sessions>Sessions</a>"
                   "<a href=/settings>Settings</a><a href=/certificate>Certificate</a>"
                   f"<form method=post action=/logout><input type=hidden name=csrf "
                   f"value={login.csrf}><button>Log out {_esc(login.user)}</button></form></nav>")
            if self.server.check_settings_change():
                nav += ("<div class=banner id=restart-banner>Settings changed: restart the "
                        "server to apply them.</div>")
        js = (*(("live.js",) if live else ()), *scripts)
        text = (f"<!doctype html><html><head><meta charset=utf-8><title>{_esc(title)} - "
                f"Casemate</title>"
                + "".join(f"<link rel=stylesheet href=/static/{n}>"
                          for n in (*styles, "casemate.css"))
                + f"</head><body>{nav}<main>{body}</main>"
                + "".join(f"<script src=/static/{n}></script>" for n in js) + "</body></html>")
        return web.Response(text=text, content_type="text/html", status=status)

    def _status_html(self) -> str:
        st = status(self.server)
        mode = st["mode"]
        rows = [("Mode", f"<span class={'enc' if mode == 'encrypted' else 'plain'}>{mode}"
                 + (f" (TLS {st['min_tls_version']} minimum)" if st["min_tls_version"] else "")
                 + "</span>")]
        for title, key, show in _STATUS_ROWS:
            if st[key] is not None:
                rows.append((title, _esc(show(st[key]))))
        return "<table id=status>" + "".join(
            f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"

    async def dashboard(self, request: web.Request, login: WebLogin) -> web.Response:
        if request.query.get("fragment"):
            return web.Response(text=self._status_html(), content_type="text/html")
        graphs = "".join(f"<figure class=graph id=graph-{g}><figcaption>{title} "
                         "(last hour)</figcaption><div class=plot></div></figure>"
                         for g, title in _GRAPHS)
        return self.page("Dashboard", f"<h1>Dashboard</h1><div id=live>"
                          f"{self._status_html()}</div><section id=graphs>{graphs}</section>",
                          login, live=True, scripts=("uPlot.iife.min.js", "dashboard.js"),
                          styles=("uPlot.min.css",))

    def _sessions_html(self, login: WebLogin) -> str:
        head = "".join(f"<th>{t}</th>" for t, _ in _SESSION_CELLS) + "<th>Action</th>"
        body = []
        now = time.time()
        for row in session_rows(self.server):
            r = dict(zip(SESSION_COLUMNS, row, strict=True))
            cells = "".join(cell(r, now) for _, cell in _SESSION_CELLS)
            confirm = (f"Drop session {r['id']} of {_text(r['user'])} ({_text(r['program'])}"
                       f", {_text(r['address'])})? Its open transaction is rolled back.")
            drop = (f"<form method=post action=/sessions/{r['id']}/drop data-confirm=\""
                    f"{_esc(confirm)}\"><input type=hidden name=csrf value={login.csrf}>"
                    "<button>Drop</button></form>")
            body.append(f"<tr data-session={r['id']}>{cells}<td>{drop}</td></tr>")
        return f"<table id=sessions><tr>{head}</tr>{''.join(body)}</table>"

    async def sessions_page(self, request: web.Request, login: WebLogin) -> web.Response:
        if request.query.get("fragment"):
            return web.Response(text=self._sessions_html(login), content_type="text/html")
        msg = (f"<h2>Message to all sessions</h2><form method=post action=/message>"
               f"<input type=hidden name=csrf value={login.csrf}><input name=text size=60>"
               "<button>Send</button></form>")
        return self.page("Sessions", f"<h1>Sessions</h1><div id=live>"
                          f"{self._sessions_html(login)}</div>{msg}", login, live=True,
                          scripts=("sessions.js",))

    # -- settings -------------------------------------------------------------------
    def _file_network(self) -> dict[str, Any]:
        data = tomllib.loads(self.server.folder.settings_path.read_text(encoding="utf-8"))
        s = parse_settings(data, str(self.server.folder.settings_path))
        return {f: getattr(s.network, f) for f in s.network.__dataclass_fields__}

    async def settings_page(self, request: web.Request, login: WebLogin,
                            error: str = "") -> web.Response:
        try:
            net = self._file_network()
        except SettingsError as e:
            return self.page("Settings", f"<p class=err>{_esc(e)}</p>", login)

        def check(name: str) -> str:
            return " checked" if net[name] else ""
        tls_opts = "".join(f"<option{' selected' if net['min_tls_version'] == v else ''}>{v}"
                           "</option>" for v in ("1.2", "1.3"))
        body = (f"<h1>Network settings</h1>{f'<p class=err id=error>{_esc(error)}</p>' if error else ''}"
                f"<form method=post action=/settings><input type=hidden name=csrf "
                f"value={login.csrf}>"
                f"<label>Publication name <input name=publication_name value="
                f"\"{_esc(net['publication_name'])}\">{self._running('publication_name', net)}"
                f"</label><label>Listen addresses (comma-separated) <input name=listen value="
                f"\"{_esc(', '.join(net['listen']))}\">{self._running('listen', net)}</label>"
                f"<label>Port <input name=port type=number value={net['port']}>"
                f"{self._running('port', net)}</label>"
                f"<label><input type=checkbox name=encrypt_client_server_connections "
                f"id=encrypt{check('encrypt_client_server_connections')}> Encrypt "
                f"Client/Server Connections{self._running('encrypt_client_server_connections', net)}"
                f"</label><label>Minimum TLS version <select name=min_tls_version>{tls_opts}"
                f"</select>{self._running('min_tls_version', net)}</label><label><input "
                f"type=checkbox name=require_client_certificate"
                f"{check('require_client_certificate')}> Require client certificates"
                f"{self._running('require_client_certificate', net)}</label>"
                "<button type=submit id=save>Save</button></form>"
                "<p>Settings are read when the server starts: restart it to apply a change.</p>")
        return self.page("Settings", body, login, status=400 if error else 200)

    def _running(self, name: str, net: dict[str, Any]) -> str:
        """What the running server uses, beside the file's value when they differ (a
        ``--port``/``--host`` override, an edit not applied yet, port 0 resolved)."""
        if name == "port" and self.server.addresses:
            value: Any = self.server.addresses[0][1]
        else:
            value = getattr(self.server.settings.network, name)
        if value == net[name]:
            return ""
        shown = (", ".join(value) if isinstance(value, list | tuple) else
                 ("on" if value else "off") if isinstance(value, bool) else value)
        return f"<span class=running id=running-{name}>running: {_esc(shown)}</span>"

    # -- certificate ----------------------------------------------------------------
    async def cert_page(self, request: web.Request, login: WebLogin) -> web.Response:
        folder = self.server.folder
        try:
            info = tls.inspect_cert(tls.load_chain(folder.cert_path)[0])
            rows = [("Subject", info.subject), ("Issuer", info.issuer + (
                " (self-signed)" if info.self_signed else "")), ("SANs", ", ".join(info.sans)),
                ("Valid", f"{info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d} "
                          f"({info.days_left} days left)"), ("Key", info.key_type),
                ("SHA-256", info.sha256), ("Key SHA-256", info.spki_sha256)]
            table = "<table id=certificate>" + "".join(
                f"<tr><th>{k}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"
        except tls.CertificateError as e:
            table = f"<p class=err>{_esc(e)}</p>"
        hidden = f"<input type=hidden name=csrf value={login.csrf}>"
        body = (f"<h1>Certificate</h1>{table}<h2>Replace it</h2>"
                f"<form method=post action=/certificate/generate>{hidden}<button>Generate a "
                "new self-signed pair</button> (clients that pinned the old key must run "
                "casemate trust forget)</form>"
                f"<form method=post action=/certificate/csr>{hidden}<button>Download a "
                "certificate signing request</button> (new key kept in Resources/request.key;"
                " install the signed certificate with casemate cert DIR install)</form>")
        return self.page("Certificate", body, login)

    # -- JSON -------------------------------------------------------------------------
    async def api_status(self, request: web.Request, login: WebLogin) -> web.Response:
        return web.json_response(status(self.server), dumps=lambda o: json.dumps(o, default=str))

    async def api_history(self, request: web.Request, login: WebLogin) -> web.Response:
        """The samples of the last hour newer than ``since`` (unix time), as columns."""
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since: a unix time in seconds") from None
        return web.json_response(self.history.since(since))

    async def api_sessions(self, request: web.Request, login: WebLogin) -> web.Response:
        rows = [dict(zip(SESSION_COLUMNS, r, strict=True)) for r in session_rows(self.server)]
        return web.json_response(rows, dumps=lambda o: json.dumps(o, default=str))


# -- human units ------------------------------------------------------------------------
def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _text(v: Any) -> str:
    """A client-chosen string for a page: no control or bidirectional characters."""
    return "" if v is None else clean(v, 1000) if isinstance(v, str) else str(v)


# The dashboard's status rows: (title, key of monitor.status, shown as).
_STATUS_ROWS: list[tuple[str, str, Any]] = [
    ("Version", "version", str), ("Publication", "publication", str),
    ("Up for", "uptime_seconds", human_duration),
    ("Certificate", "certificate_subject", str),
    ("Certificate SHA-256", "certificate_sha256", str),
    ("Certificate expires in", "certificate_days_left", lambda d: f"{d} days"),
    ("Restart pending", "restart_pending", _yes), ("Accepting connections", "accepting", _yes),
    ("Sessions", "sessions", str), ("Statements per second", "statements_per_second", str),
    ("Data size", "data_bytes", human_bytes),
]


def _since(iso: str | None, now: float) -> float | None:
    return None if not iso else now - dt.datetime.fromisoformat(iso).timestamp()


def _td(v: Any, cls: str = "", title: str = "") -> str:
    attrs = (f" class={cls}" if cls else "") + (f" title=\"{_esc(title)}\"" if title else "")
    return f"<td{attrs}>{_esc(v)}</td>"


def _encryption_cell(r: dict[str, Any], now: float) -> str:
    detail = " ".join(_text(r[k]) for k in ("tls_version", "cipher") if r[k])
    if r["client_certificate"]:
        detail += f"; client certificate {_text(r['client_certificate'])}"
    return _td("encrypted" if r["encrypted"] else "plain",
               "enc" if r["encrypted"] else "plain", detail)


def _transaction_cell(r: dict[str, Any], now: float) -> str:
    if not r["in_transaction"]:
        return _td("")
    text = f"open {human_duration(r['transaction_seconds'])}"
    if r["write_lock_seconds"] is not None:
        text += f", writing {human_duration(r['write_lock_seconds'])}"
    return _td(text)


# The sessions table: (column title, cell); the full detail is in /api/sessions.
_SESSION_CELLS: list[tuple[str, Any]] = [
    ("ID", lambda r, now: _td(r["id"], "num")),
    ("User", lambda r, now: _td(_text(r["user"]), "cut", "authenticated by "
                                + _text(r["authenticated_by"]) if r["authenticated_by"] else "")),
    ("Client address", lambda r, now: _td(_text(r["address"]), "cut", _text(r["address"]))),
    ("Program", lambda r, now: _td(_text(r["program"]), "cut", _text(r["client_host"]))),
    ("Connected for", lambda r, now: _td(human_duration(_since(r["connected_since"], now)),
                                         title=r["connected_since"] or "")),
    ("Idle", lambda r, now: _td(human_duration(r["idle_seconds"]))),
    ("Encryption", _encryption_cell),
    ("Statements", lambda r, now: _td(r["statements"], "num")),
    ("Transaction", _transaction_cell),
]


@functools.cache
def _static_file(name: str) -> str:
    return (_FILES / name).read_text(encoding="utf-8")
