"""The web administration page, served by the Casemate server in its own event loop (aiohttp).

Off by default (``[admin_web] enabled``).  HTTPS with the database's
certificate when connections are encrypted, and always when it listens
beyond loopback.  Only users of the ``admin`` group log in (same users and
password verifiers as the wire protocol, throttled like it).  The session
cookie is HttpOnly, SameSite=Strict and, over HTTPS, Secure; every action is
a POST carrying the login's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import html
import ipaddress
import json
import os
import secrets
import socket
import ssl
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from .. import continuity, tls
from ..database import GENERATED_MARKER
from ..errors import Codes
from ..settings import SettingsError, parse_settings
from ..settings_file import set_toml_value
from ..units import human_bytes, human_duration
from .audit import clean
from .history import History
from .monitor import SESSION_COLUMNS, session_rows, status

if TYPE_CHECKING:
    from .app import Server

__all__ = ["WebAdmin", "start_web"]

COOKIE = "casemate_admin"
MAX_WEB_LOGINS = 1000  # bounded: old logins are dropped first


@dataclass
class WebLogin:
    user: str
    csrf: str
    expires: float


def verify_password(record: Any, password: str) -> bool:
    """Check a password against a SCRAM-SHA-256 verifier (RFC 5802), in constant time."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), record.salt, record.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), record.stored_key)


def _dummy_record(user: str) -> Any:
    from types import SimpleNamespace

    from .auth import _fake
    salt, stored, _server, iterations = _fake(user)
    return SimpleNamespace(salt=salt, stored_key=stored, iterations=iterations)


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
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_DENIED = "connections from this address are refused by the server's access rules"


class WebAdmin:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings.admin_web
        self.logins: dict[str, WebLogin] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.https = self.settings.needs_https(server.encrypted)
        self._names = self._known_names()
        self.history = History(server)
        self._sampler: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        if not self.https:
            return None
        folder = self.server.folder
        folder.ensure_certificate(self.server.settings)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(folder.cert_path), str(folder.key_path))
        self._ctx = ctx
        return ctx

    def reload_certificate(self) -> None:
        """Serve the current key.pem/cert.pem to new HTTPS connections too."""
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            folder = self.server.folder
            ctx.load_cert_chain(str(folder.cert_path), str(folder.key_path))

    async def start(self) -> None:
        app = web.Application(middlewares=[self._headers, self._access, self._rights],
                              client_max_size=64 * 1024)
        app.add_routes([
            web.get("/static/{name}", self.static),
            web.get("/favicon.ico", self.no_icon),
            web.get("/login", self.login_page), web.post("/login", self.login),
            web.post("/logout", self.logout), web.get("/", self.dashboard),
            web.get("/sessions", self.sessions_page),
            web.post(r"/sessions/{id:\d+}/drop", self.drop),
            web.post("/message", self.message),
            web.get("/settings", self.settings_page), web.post("/settings", self.save_settings),
            web.get("/certificate", self.cert_page),
            web.post("/certificate/generate", self.cert_generate),
            web.post("/certificate/csr", self.cert_csr),
            web.get("/api/status", self.api_status), web.get("/api/sessions", self.api_sessions),
            web.get("/api/history", self.api_history),
        ])
        self._sampler = asyncio.get_running_loop().create_task(self.history.run())
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        ctx = self._ssl()
        port = self.settings.port
        for host in self.settings.listen:
            site = web.TCPSite(self.runner, host, port, ssl_context=ctx)
            await site.start()
            if not port:
                server = site._server
                assert server is not None
                port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        host = self.settings.listen[0]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ctx else 'http'}://{shown}:{port}/"

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Also on redirects and errors, which aiohttp raises: the login's redirect sets
        # the cookie.
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as e:
            self._secure(e.headers)
            raise
        self._secure(resp.headers)
        return resp

    def _secure(self, headers: Any) -> None:
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Content-Security-Policy"] = _CSP
        headers["Cache-Control"] = "no-store"
        if self.https:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    @web.middleware
    async def _access(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The server's IP rules (same audit line as the database port) and the Host check."""
        address = request.remote or "?"
        rule = self.server.settings.access.check_address(address)
        if rule is not None and rule.action == "deny":
            self.server.audit.event("connection_refused", address=address, rule=rule.text,
                                    channel="web")
            raise web.HTTPForbidden(text=_DENIED, headers={"Connection": "close"})
        if not self._host_ok(request.host):
            # A name we do not answer to: a DNS-rebinding page would make the browser
            # send its own name here, with this server's cookie out of its reach.
            raise web.HTTPMisdirectedRequest(text=f"unknown host {clean(request.host)!r}")
        return await handler(request)  # type: ignore[no-any-return]

    def _host_ok(self, host: str) -> bool:
        name = host.lower()
        if name.startswith("["):
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        try:
            ipaddress.ip_address(name)
            return True  # an address is no DNS name: nothing to rebind
        except ValueError:
            return name.rstrip(".") in self._names

    def _known_names(self) -> set[str]:
        """Names the page answers to: localhost, this machine's, the listen names and
        the certificate's DNS names."""
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        names.update(a.lower() for a in (*self.settings.listen,
                                         *self.server.settings.network.listen))
        with contextlib.suppress(tls.CertificateError, OSError):
            info = tls.inspect_cert(tls.load_chain(self.server.folder.cert_path)[0])
            names.update(n.lower() for n in info.sans)
        return names

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = _STATIC.get(name)
        if found is None and name in _FILE_TYPES:  # a fixed list: no path from the request
            found = (_static_file(name), _FILE_TYPES[name])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(text=found[0], content_type=found[1])

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)  # browsers ask for it: no 404 in their consoles

    @web.middleware
    async def _rights(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # A web login ends when its user is removed or leaves the admin group, even when
        # the change came from the CLI or another server (see server/rights.py).
        await self.server.rights.check()
        return await handler(request)  # type: ignore[no-any-return]

    def forget_logins(self, gone: Any) -> None:
        """End the web logins whose user ``gone(user)`` says lost the admin rights."""
        for token, login in list(self.logins.items()):
            if gone(login.user):
                del self.logins[token]
                self.server.audit.event("disconnect", user=login.user, channel="web",
                                        reason="user removed or moved out of the admin group")

    # -- authentication -----------------------------------------------------------
    def _login_of(self, request: web.Request) -> WebLogin | None:
        token = request.cookies.get(COOKIE, "")
        login = self.logins.get(token)
        if login is None or login.expires < time.time():
            self.logins.pop(token, None)
            return None
        return login

    def _require(self, request: web.Request) -> WebLogin:
        login = self._login_of(request)
        if login is None:
            raise web.HTTPSeeOther("/login")
        return login

    async def _require_post(self, request: web.Request) -> tuple[WebLogin, Any]:
        login = self._require(request)
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), login.csrf):
            raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page")
        if not await self.server.rights.still_admin(login.user):  # an action: read afresh
            self.logins.pop(request.cookies.get(COOKIE, ""), None)
            raise web.HTTPSeeOther("/login")
        return login, form

    async def login_page(self, request: web.Request, error: str = "") -> web.Response:
        body = (f"<h1>{_esc(self.server.settings.network.publication_name)}: administration"
                f"</h1>{f'<p class=err id=error>{_esc(error)}</p>' if error else ''}"
                "<form method=post action=/login><label>User <input name=user "
                "autocomplete=username></label><label>Password <input name=password "
                "type=password autocomplete=current-password></label>"
                "<button type=submit>Log in</button></form>")
        return self._page("Log in", body, None, status=401 if error else 200)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", ""))[:200], str(form.get("password", ""))
        address = request.remote or "?"
        server = self.server
        # Counted now and queued behind the attempts in flight (audit.Throttle).
        if not await server.throttle.wait_turn(address, user,
                                               server.settings.limits.login_timeout_seconds):
            server.audit.event("login_failed", user=clean(user), address=address,
                               channel="web", reason="throttled")
            return await self.login_page(request, "Too many login attempts: try again later.")
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(server.executor, server.backend.get_user, user)
        # An unknown user costs the same hashing as a known one: timing reveals nothing.
        check = record if record is not None else _dummy_record(user)
        ok = await loop.run_in_executor(server.executor, verify_password, check, password)
        ok = ok and record is not None
        if not ok:
            server.audit.event("login_failed", user=clean(user), address=address,
                               channel="web")
            return await self.login_page(request, "Wrong user name or password.")
        assert record is not None
        server.throttle.succeeded(address, user)
        if "certificate" in server.settings.auth.method_for(record.name, record.group):
            # The page takes passwords only: a user bound to a certificate cannot use it.
            server.audit.event("login_failed", user=user, address=address, channel="web",
                               reason="auth method needs a client certificate")
            return await self.login_page(request, "Wrong user name or password.")
        if record.group != "admin":
            server.audit.event("permission_refused", user=user, address=address,
                               detail="web administration needs the admin group")
            return await self.login_page(
                request, f"User {user!r} is not in the admin group: administration refused.")
        token = secrets.token_urlsafe(32)
        if len(self.logins) >= MAX_WEB_LOGINS:
            self.logins.pop(next(iter(self.logins)))
        self.logins[token] = WebLogin(user, secrets.token_urlsafe(32),
                                      time.time() + 60 * self.settings.session_minutes)
        server.audit.event("login_ok", user=user, address=address, channel="web",
                           encrypted=self.https)
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(COOKIE, token, httponly=True, secure=self.https, samesite="Strict",
                        path="/", max_age=60 * self.settings.session_minutes)
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        await self._require_post(request)
        self.logins.pop(request.cookies.get(COOKIE, ""), None)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # -- rendering ------------------------------------------------------------------
    def _page(self, title: str, body: str, login: WebLogin | None, status: int = 200,
              live: bool = False, scripts: tuple[str, ...] = (),
              styles: tuple[str, ...] = ()) -> web.Response:
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

    async def dashboard(self, request: web.Request) -> web.Response:
        login = self._require(request)
        if request.query.get("fragment"):
            return web.Response(text=self._status_html(), content_type="text/html")
        graphs = "".join(f"<figure class=graph id=graph-{g}><figcaption>{title} "
                         "(last hour)</figcaption><div class=plot></div></figure>"
                         for g, title in _GRAPHS)
        return self._page("Dashboard", f"<h1>Dashboard</h1><div id=live>"
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

    async def sessions_page(self, request: web.Request) -> web.Response:
        login = self._require(request)
        if request.query.get("fragment"):
            return web.Response(text=self._sessions_html(login), content_type="text/html")
        msg = (f"<h2>Message to all sessions</h2><form method=post action=/message>"
               f"<input type=hidden name=csrf value={login.csrf}><input name=text size=60>"
               "<button>Send</button></form>")
        return self._page("Sessions", f"<h1>Sessions</h1><div id=live>"
                          f"{self._sessions_html(login)}</div>{msg}", login, live=True,
                          scripts=("sessions.js",))

    async def drop(self, request: web.Request) -> web.Response:
        login, _ = await self._require_post(request)
        s = self.server.sessions.get(int(request.match_info["id"]))
        if s is not None:
            s.drop(f"session dropped by administrator {login.user!r} (web)")
            self.server.audit.event("admin", user=login.user, channel="web", command="drop",
                                    target=s.id)
        raise web.HTTPSeeOther("/sessions")

    async def message(self, request: web.Request) -> web.Response:
        login, form = await self._require_post(request)
        text = str(form.get("text", ""))[:2000]
        if text:
            for s in list(self.server.sessions.values()):
                s.notice(Codes.ADMIN_MESSAGE, f"message from {login.user}: {text}")
            self.server.audit.event("admin", user=login.user, channel="web", command="message")
        raise web.HTTPSeeOther("/sessions")

    # -- settings -------------------------------------------------------------------
    def _file_network(self) -> dict[str, Any]:
        data = tomllib.loads(self.server.folder.settings_path.read_text(encoding="utf-8"))
        s = parse_settings(data, str(self.server.folder.settings_path))
        return {f: getattr(s.network, f) for f in s.network.__dataclass_fields__}

    async def settings_page(self, request: web.Request, error: str = "") -> web.Response:
        login = self._require(request)
        try:
            net = self._file_network()
        except SettingsError as e:
            return self._page("Settings", f"<p class=err>{_esc(e)}</p>", login)

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
        return self._page("Settings", body, login, status=400 if error else 200)

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

    async def save_settings(self, request: web.Request) -> web.Response:
        login, form = await self._require_post(request)
        path = self.server.folder.settings_path
        text = path.read_text(encoding="utf-8")
        try:
            values = {
                "publication_name": str(form.get("publication_name", "")).strip(),
                "listen": [a.strip() for a in str(form.get("listen", "")).split(",")
                           if a.strip()],
                "port": int(str(form.get("port", "0"))),
                "encrypt_client_server_connections": "encrypt_client_server_connections" in form,
                "min_tls_version": str(form.get("min_tls_version", "1.2")),
                "require_client_certificate": "require_client_certificate" in form,
            }
            for key, value in values.items():
                text = set_toml_value(text, "network", key, value)
            parse_settings(tomllib.loads(text), str(path))
        except (SettingsError, ValueError) as e:
            return await self.settings_page(request, str(e))
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.server.audit.event("admin", user=login.user, channel="web",
                                command="settings", target="network")
        raise web.HTTPSeeOther("/settings")

    # -- certificate ----------------------------------------------------------------
    async def cert_page(self, request: web.Request) -> web.Response:
        login = self._require(request)
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
        return self._page("Certificate", body, login)

    async def cert_generate(self, request: web.Request) -> web.Response:
        login, _ = await self._require_post(request)
        folder, settings = self.server.folder, self.server.settings
        key = tls.generate_key()
        cert = tls.make_self_signed(key, settings.network.publication_name,
                                    tls.default_sans(settings.network.listen))
        with contextlib.suppress(tls.CertificateError):  # the old key vouches for the new one
            continuity.endorse(folder.resources / "successor.pem", tls.load_key(folder.key_path),
                               cert, settings.network.key_transition_days,
                               settings.network.publication_name)
        for p in (folder.key_path, folder.cert_path):
            if p.exists():
                os.replace(p, p.with_suffix(".pem.old"))
        tls.write_key(folder.key_path, key)
        tls.write_cert(folder.cert_path, cert)
        (folder.resources / GENERATED_MARKER).write_text(tls.spki_fingerprint(cert) + "\n")
        self.server.reload_certificate()
        self.reload_certificate()
        self.server.audit.event("admin", user=login.user, channel="web",
                                command="certificate generate")
        raise web.HTTPSeeOther("/certificate")

    async def cert_csr(self, request: web.Request) -> web.Response:
        login, _ = await self._require_post(request)
        folder, settings = self.server.folder, self.server.settings
        key_path = folder.resources / "request.key"
        if key_path.exists():
            os.replace(key_path, key_path.with_suffix(".key.old"))
        key = tls.generate_key()
        tls.write_key(key_path, key)
        csr = tls.make_csr(key, settings.network.publication_name,
                           tls.default_sans(settings.network.listen))
        pem = csr.public_bytes(serialization.Encoding.PEM)
        (folder.resources / "request.csr").write_bytes(pem)
        self.server.audit.event("admin", user=login.user, channel="web", command="certificate csr")
        return web.Response(body=pem, content_type="application/pkcs10", headers={
            "Content-Disposition": "attachment; filename=request.csr"})

    # -- JSON -------------------------------------------------------------------------
    async def api_status(self, request: web.Request) -> web.Response:
        self._require(request)
        return web.json_response(status(self.server), dumps=lambda o: json.dumps(o, default=str))

    async def api_history(self, request: web.Request) -> web.Response:
        """The samples of the last hour newer than ``since`` (unix time), as columns."""
        self._require(request)
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since: a unix time in seconds") from None
        return web.json_response(self.history.since(since))

    async def api_sessions(self, request: web.Request) -> web.Response:
        self._require(request)
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


async def start_web(server: Server) -> WebAdmin:
    """Start the web administration page on the server's event loop."""
    w = WebAdmin(server)
    await w.start()
    return w
