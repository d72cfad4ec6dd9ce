"""SQLAlchemy 2.x dialects: ``casemate://`` (DB-API) and ``casemate+async://`` (asyncio).

SQL compilation, types and reflection are SQLAlchemy's own SQLite dialect
(the server stores its data in SQLite); everything on the wire is Casemate's
client::

    from sqlalchemy import create_engine
    engine = create_engine("casemate://admin:pw@db.example.com:19812?encryption=required",
                           pool_pre_ping=True)

URL query options (or ``connect_args``): ``tls_ca``, ``tls_cert``, ``tls_key``,
``encryption`` (``auto``/``required``), ``connect_timeout``, ``keepalive``,
``reconnect_attempts``, ``reconnect_delay``, ``program``.  ``pip install
casemate`` registers both dialects as SQLAlchemy entry points; docs/sqlalchemy.md
says what works and what does not.
"""

from __future__ import annotations

from .aio import CasemateAsyncDialect
from .base import BACKENDS, CasemateDialect, connect_kwargs

__all__ = ["CasemateDialect", "CasemateAsyncDialect", "BACKENDS", "connect_kwargs"]

dialect = CasemateDialect
