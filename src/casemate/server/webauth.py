"""The web administration page's logins: the password check, the session cookie, CSRF.

Only users of the ``admin`` group log in (same users and password verifiers
as the wire protocol, throttled like it).  A login is a random token in an
HttpOnly, SameSite=Strict cookie (Secure over HTTPS) and a CSRF token that
every action's POST must carry (:meth:`WebAuth.require_post`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .audit import clean

if TYPE_CHECKING:
    from .app import Server

__all__ = ["COOKIE", "MAX_WEB_LOGINS", "WebAuth", "WebLogin", "verify_password"]

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


class WebAuth:
    """The logins of the page (cookie token -> :class:`WebLogin`), and the login and logout.

    ``login_page(request, error)`` renders the login form again after a
    failed attempt.
    """

    def __init__(self, server: Server, https: bool,
                 login_page: Callable[[web.Request, str], Awaitable[web.Response]]) -> None:
        self.server = server
        self.settings = server.settings.admin_web
        self.https = https
        self.login_page = login_page
        self.logins: dict[str, WebLogin] = {}

    def forget_logins(self, gone: Any) -> None:
        """End the web logins whose user ``gone(user)`` says lost the admin rights."""
        for token, login in list(self.logins.items()):
            if gone(login.user):
                del self.logins[token]
                self.server.audit.event("disconnect", user=login.user, channel="web",
                                        reason="user removed or moved out of the admin group")

    def login_of(self, request: web.Request) -> WebLogin | None:
        token = request.cookies.get(COOKIE, "")
        login = self.logins.get(token)
        if login is None or login.expires < time.time():
            self.logins.pop(token, None)
            return None
        return login

    def require(self, request: web.Request) -> WebLogin:
        login = self.login_of(request)
        if login is None:
            raise web.HTTPSeeOther("/login")
        return login

    async def require_post(self, request: web.Request) -> tuple[WebLogin, Any]:
        login = self.require(request)
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), login.csrf):
            raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page")
        if not await self.server.rights.still_admin(login.user):  # an action: read afresh
            self.logins.pop(request.cookies.get(COOKIE, ""), None)
            raise web.HTTPSeeOther("/login")
        return login, form

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

    async def logout(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
        self.logins.pop(request.cookies.get(COOKIE, ""), None)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp
