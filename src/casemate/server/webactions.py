"""The web administration page's actions: what an administrator's POST changes.

Each action runs only after the routing layer checked the login, its CSRF
token and that its user is still an admin (:meth:`WebAuth.require_post
<casemate.server.webauth.WebAuth.require_post>`), and each is written to the
audit log under the administrator's name.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from .. import continuity, tls
from ..database import GENERATED_MARKER
from ..errors import Codes
from ..settings import SettingsError, parse_settings
from ..settings_file import set_toml_value
from .webauth import WebLogin
from .webpages import Pages

if TYPE_CHECKING:
    from .app import Server

__all__ = ["Actions"]


class Actions:
    """The POST handlers: end a session, message all sessions, save the network settings,
    replace the certificate.  ``reload_certificate`` makes the page's own HTTPS serve a new
    certificate."""

    def __init__(self, server: Server, pages: Pages,
                 reload_certificate: Callable[[], None]) -> None:
        self.server = server
        self.pages = pages
        self.reload_certificate = reload_certificate

    # -- sessions -------------------------------------------------------------------
    async def drop(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
        s = self.server.sessions.get(int(request.match_info["id"]))
        if s is not None:
            s.drop(f"session dropped by administrator {login.user!r} (web)")
            self.server.audit.event("admin", user=login.user, channel="web", command="drop",
                                    target=s.id)
        raise web.HTTPSeeOther("/sessions")

    async def message(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
        text = str(form.get("text", ""))[:2000]
        if text:
            for s in list(self.server.sessions.values()):
                s.notice(Codes.ADMIN_MESSAGE, f"message from {login.user}: {text}")
            self.server.audit.event("admin", user=login.user, channel="web", command="message")
        raise web.HTTPSeeOther("/sessions")

    # -- settings -------------------------------------------------------------------
    async def save_settings(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
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
            return await self.pages.settings_page(request, login, str(e))
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.server.audit.event("admin", user=login.user, channel="web",
                                command="settings", target="network")
        raise web.HTTPSeeOther("/settings")

    # -- certificate ----------------------------------------------------------------
    async def cert_generate(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
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

    async def cert_csr(self, request: web.Request, login: WebLogin, form: Any) -> web.Response:
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
