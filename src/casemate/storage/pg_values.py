"""Values between PostgreSQL and the Casemate wire format: how parameters are bound
(client-side, typed as server-side binding would type them), how JSON comes back, which
types arrive as text, and the type codes of a result's description (docs/types.md).

Part of the PostgreSQL backend (:mod:`casemate.storage.postgresql`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb, JsonbDumper, JsonbLoader, JsonLoader
from psycopg.types.numeric import DecimalDumper, FloatDumper

from ..protocol.codec import Json, dumps_json

# Values psycopg would load as Python types the Casemate wire format has no
# encoding for: they arrive as PostgreSQL's text form instead.
_TEXT_TYPES = ("interval", "inet", "cidr", "macaddr", "macaddr8", "int4range",
               "int8range", "numrange", "daterange", "tsrange", "tstzrange", "int4multirange",
               "int8multirange", "nummultirange", "datemultirange", "tsmultirange",
               "tstzmultirange")


# PostgreSQL type OIDs (pg_type) -> description type codes (docs/types.md); libpq
# reports them even for an empty result.
_TYPE_OIDS = {16: "bool", 17: "bytes", 18: "text", 19: "text", 20: "integer", 21: "integer",
              23: "integer", 25: "text", 26: "integer", 114: "json", 700: "float",
              701: "float", 1042: "text", 1043: "text", 1082: "date", 1083: "time",
              1114: "datetime", 1184: "datetime", 1266: "time", 1700: "decimal",
              2950: "uuid", 3802: "json"}



class _Float8Dumper(FloatDumper):
    """Floats bound client-side as float8, as server-side binding types them (not numeric)."""

    def quote(self, obj: float) -> bytes:
        return b"'" + bytes(self.dump(obj) or b"") + b"'::float8"


class _NumericDumper(DecimalDumper):
    """Decimals bound client-side as numeric: a bare ``5`` would be an integer to
    PostgreSQL, and ``SELECT ?`` would give back an int for Decimal("5")."""

    def quote(self, obj: Any) -> bytes:
        value = bytes(super().quote(obj)).strip()
        return value if value.endswith(b"::numeric") else b"'" + value + b"'::numeric"


def _param(v: Any) -> Any:
    if isinstance(v, tuple | list):  # the wire's arrays arrive as tuples: PostgreSQL arrays
        return [_param(x) for x in v]
    if isinstance(v, Json):  # casemate.Json(...): jsonb, whatever the value inside
        return Jsonb(v, dumps=Json.dumps)  # (its text, as SQLite stores it)
    return v


class _DictDumper(JsonbDumper):
    """A dict parameter: jsonb, encoded as a casemate.Json is (a Json inside it stands for
    its value; nested too deep: ValueError, the statement's error)."""

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.dumps = dumps_json


def _wrapped_json(data: Any) -> Any:
    """json and jsonb values come back wrapped, so they travel as JSON (a list is no array),
    and are sent on as PostgreSQL gave their text; one Python cannot decode (nested deeper
    than its recursion limit allows, about 900 levels where PostgreSQL takes thousands, or a
    number of more digits than it converts) as that text, as on SQLite, not as an error
    that failed the query or ended the session."""
    text = bytes(data)
    try:
        return Json.read(text)
    except (RecursionError, ValueError):
        return text.decode(errors="replace")


class _JsonLoader(JsonLoader):
    def load(self, data: Any) -> Any:
        return _wrapped_json(data)


class _JsonbLoader(JsonbLoader):
    def load(self, data: Any) -> Any:
        return _wrapped_json(data)


def _client_loaders(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Clients' connections: JSON comes back as Json (the service's own reads stay plain)."""
    conn.adapters.register_loader("json", _JsonLoader)
    conn.adapters.register_loader("jsonb", _JsonbLoader)
    return conn


def _params(params: Sequence[Any]) -> list[Any]:
    return [_param(v) for v in params]
