"""The web administration page, served by the Casemate server in its own event loop (aiohttp).

Off by default (``[admin_web] enabled``).  HTTPS with the database's
certificate when connections are encrypted, and always when it listens
beyond loopback.  Only users of the ``admin`` group log in (same users and
password verifiers as the wire protocol, throttled like it).  The session
cookie is HttpOnly, SameSite=Strict and, over HTTPS, Secure; every action is
a POST carrying the login's CSRF token.

This module is the HTTP layer: the listeners, the routes (which say what
needs a login, and which are actions, needing the CSRF token too), and the
checks every request passes (the server's IP rules, the Host name, the
security headers).  The logins are in :mod:`.webauth`, the pages and JSON
in :mod:`.webpages`, the actions in :mod:`.webactions` and the graphs'
samples in :mod:`.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import tls
from .audit import clean
from .history import History
from .webactions import Actions
from .webauth import WebAuth, WebLogin
from .webpages import Pages

if TYPE_CHECKING:
    from .app import Server

__all__ = ["WebAdmin", "start_web"]

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_DENIED = "connections from this address are refused by the server's access rules"
_Viewer = Callable[[web.Request, WebLogin], Awaitable[web.Response]]
_Action = Callable[[web.Request, WebLogin, Any], Awaitable[web.Response]]


class WebAdmin:
    """The page on its listeners: routes each request, after the checks, to the logins
    (:class:`WebAuth`), the pages (:class:`Pages`) or the actions (:class:`Actions`)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings.admin_web
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.https = self.settings.needs_https(server.encrypted)
        self._names = self._known_names()
        self.history = History(server)
        self._sampler: asyncio.Task[None] | None = None
        self.pages = Pages(server, self.history)
        self.auth = WebAuth(server, self.https, self.pages.login_page)
        self.actions = Actions(server, self.pages, self.reload_certificate)

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
        app.add_routes(self._routes())
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

    # -- routes and the checks of every request ------------------------------------
    def _routes(self) -> list[web.AbstractRouteDef]:
        pages, actions, auth = self.pages, self.actions, self.auth
        view, act = self._viewer, self._action
        return [
            web.get("/static/{name}", pages.static),
            web.get("/favicon.ico", self.no_icon),
            web.get("/login", pages.login_page), web.post("/login", auth.login),
            web.post("/logout", act(auth.logout)), web.get("/", view(pages.dashboard)),
            web.get("/sessions", view(pages.sessions_page)),
            web.post(r"/sessions/{id:\d+}/drop", act(actions.drop)),
            web.post("/message", act(actions.message)),
            web.get("/settings", view(pages.settings_page)),
            web.post("/settings", act(actions.save_settings)),
            web.get("/certificate", view(pages.cert_page)),
            web.post("/certificate/generate", act(actions.cert_generate)),
            web.post("/certificate/csr", act(actions.cert_csr)),
            web.get("/api/status", view(pages.api_status)),
            web.get("/api/sessions", view(pages.api_sessions)),
            web.get("/api/history", view(pages.api_history)),
        ]

    def _viewer(self, handler: _Viewer) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A page or JSON for a logged-in administrator; others are sent to /login."""
        async def view(request: web.Request) -> web.Response:
            return await handler(request, self.auth.require(request))
        return view

    def _action(self, handler: _Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A POST that changes something: logged in, with the login's CSRF token, and its
        user still an admin."""
        async def act(request: web.Request) -> web.Response:
            login, form = await self.auth.require_post(request)
            return await handler(request, login, form)
        return act

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
        self.auth.forget_logins(gone)


async def start_web(server: Server) -> WebAdmin:
    """Start the web administration page on the server's event loop."""
    w = WebAdmin(server)
    await w.start()
    return w
