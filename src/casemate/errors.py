"""The exception tree: PEP 249 classes at the root, each server error with a stable code.

Every error the server sends carries a five-character code in the style of
SQLSTATE (``docs/protocol.md`` lists them).  :func:`error_from_code` turns a
code and message received from the wire into the matching DB-API class, so a
caller can ``except casemate.IntegrityError`` whatever the backend.
"""

from __future__ import annotations

__all__ = [
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "ProtocolError",
    "SecurityError",
    "CasemateWarning",
    "UncommittedWorkWarning",
    "PasswordsFileWarning",
    "Codes",
    "error_from_code",
]


class Warning(Exception):  # noqa: A001 - PEP 249 requires this name
    """Important warnings, such as data truncation (PEP 249)."""


class CasemateWarning(UserWarning):
    """Base of what Casemate reports through :mod:`warnings` (PEP 249's ``Warning`` above
    is an exception, raised, not a warning category)."""


class UncommittedWorkWarning(CasemateWarning):
    """A connection was closed with changes not committed: the server rolls them back."""


class PasswordsFileWarning(CasemateWarning):
    """``$CASEMATE_HOME/passwords`` was ignored (readable by group or others, as libpq's
    ``.pgpass``)."""


class Error(Exception):
    """Base of every Casemate error.  ``code`` is the stable error code, or ``None``."""

    def __init__(self, message: str, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.code:
            text = f"[{self.code}] {text}"
        if self.hint:
            text = f"{text}\nHint: {self.hint}"
        return text


class InterfaceError(Error):
    """Misuse of the client library (closed cursor, bad parameter...)."""


class DatabaseError(Error):
    """An error reported by or about the database."""


class DataError(DatabaseError):
    """A value could not be processed (division by zero, out of range...)."""


class OperationalError(DatabaseError):
    """The connection or the server could not do its work (lost connection, busy, shutdown...)."""

    # For a lost connection (08006/08007): whether a transaction, or a request that may
    # have committed, went with it.  Set by the client core; False for other errors.
    transaction_lost = False


class IntegrityError(DatabaseError):
    """A constraint was violated."""


class InternalError(DatabaseError):
    """The server hit an internal error."""


class ProgrammingError(DatabaseError):
    """Bad SQL, a missing table, a wrong number of parameters..."""


class NotSupportedError(DatabaseError):
    """The operation is not supported."""


class ProtocolError(OperationalError):
    """The peer broke the wire protocol; the connection cannot be used any more."""


class SecurityError(OperationalError):
    """A connection was refused for a security reason (certificate, downgrade, encryption)."""


class Codes:
    """Stable error codes (SQLSTATE style).  The class is the first two characters."""

    CONNECTION_FAILURE = "08006"
    TRANSACTION_RESOLUTION_UNKNOWN = "08007"  # lost after a commit was sent, before its reply
    CANNOT_CONNECT = "08001"
    PROTOCOL_VIOLATION = "08P01"
    ENCRYPTION_REQUIRED = "08P02"
    NOT_ENCRYPTED = "08P03"
    UNSUPPORTED_VERSION = "08P04"
    TOO_MANY_CONNECTIONS = "53300"
    POOL_TIMEOUT = "53P05"  # client side: no pooled connection free in time
    OUT_OF_MEMORY = "53200"
    MESSAGE_TOO_LARGE = "54000"
    INVALID_PASSWORD = "28P01"
    INVALID_AUTHORIZATION = "28000"
    NO_PASSWORD = "28P02"  # client side: no password given or found for the login
    SYNTAX_ERROR = "42601"
    UNDEFINED_TABLE = "42P01"
    PROGRAMMING = "42000"
    INSUFFICIENT_PRIVILEGE = "42501"
    INTEGRITY = "23000"
    DATA = "22000"
    NUMERIC_OUT_OF_RANGE = "22003"
    INVALID_DATETIME = "22007"        # 'abc' into a DATE/TIME/TIMESTAMP column
    INVALID_TEXT_REPRESENTATION = "22P02"  # '12x' into INTEGER, DECIMAL, BOOLEAN...
    BUSY = "55P03"
    SERIALIZATION_FAILURE = "40001"
    ADMIN_SHUTDOWN = "57P01"
    IDLE_TIMEOUT = "57P05"
    ADMIN_MESSAGE = "01M00"
    WARNING = "01000"
    SESSION_DROPPED = "57P02"
    RIGHTS_CHANGED = "57P06"  # the session's user was removed or moved to another group
    NOT_SUPPORTED = "0A000"
    INVALID_CURSOR = "34000"
    NO_TRANSACTION = "25P01"
    IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
    INTERNAL = "XX000"
    METHOD_RAISED = "P0001"
    UNDEFINED_METHOD = "42883"
    WRONG_ARGUMENTS = "42804"
    TIME_LIMIT = "57014"
    QUERY_CANCELED = "57014"  # statement_timeout or a client's cancel, as in PostgreSQL
    OPERATIONAL = "58000"


_CLASS_BY_PREFIX: dict[str, type[Error]] = {
    "08": OperationalError,
    "53": OperationalError,
    "54": ProgrammingError,
    "28": OperationalError,
    "42": ProgrammingError,
    "23": IntegrityError,
    "22": DataError,
    "55": OperationalError,
    "57": OperationalError,
    "58": OperationalError,
    "0A": NotSupportedError,
    "34": ProgrammingError,
    "25": ProgrammingError,
    "XX": InternalError,
    "40": OperationalError,
}


def error_from_code(code: str, message: str, hint: str | None = None) -> Error:
    """Return the DB-API exception for a server error ``code`` (DatabaseError if unknown)."""
    if code == Codes.PROTOCOL_VIOLATION:
        return ProtocolError(message, code, hint)
    if code in (Codes.ENCRYPTION_REQUIRED, Codes.NOT_ENCRYPTED):
        return SecurityError(message, code, hint)
    cls = _CLASS_BY_PREFIX.get(code[:2], DatabaseError)
    return cls(message, code, hint)
