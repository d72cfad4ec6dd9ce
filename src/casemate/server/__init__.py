"""The Casemate server: listener, TLS, sessions, shutdown."""

from .app import Server, ServerStartError

__all__ = ["Server", "ServerStartError"]
