"""The sans-I/O protocol core: bytes in, messages out; messages in, bytes out.

Wire format (``docs/protocol.md`` has the full reference).  After TCP (and TLS,
when the server is encrypted, which this module never knows) each side sends
frames::

    +--------+------------------+---------------------------+
    | type   | length (uint32,  | body: one msgpack value   |
    | 1 byte | big-endian)      | (``length`` bytes)        |
    +--------+------------------+---------------------------+

``type`` is an ASCII letter naming the message.  A frame longer than the
negotiated maximum is a protocol error, so a peer can never make us buffer more
than one maximum-size frame.

Each direction has its own small state machine (:data:`CLIENT_TRANSITIONS`,
:data:`SERVER_TRANSITIONS`): the handshake and SCRAM messages come first, in
order, and nothing else is legal until the login has finished.  Sending or
receiving a message that the table does not allow raises :class:`ProtocolError`.

Both ends number the client's requests after the login (1, 2, ...; counted in
:attr:`ProtocolConnection.requests`).  ``CANCEL`` is not one: it carries the
number of the newest request to stop, so a cancel never reaches a request sent
after it, however late it arrives.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Any, NamedTuple

from ..errors import Codes, ProtocolError
from . import codec

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "Role",
    "Msg",
    "Message",
    "NEED_DATA",
    "ProtocolConnection",
    "RawFrame",
    "encode_frame",
]

PROTOCOL_VERSION = 1
# 16 MiB: large enough for any reasonable statement or parameter set, small
# enough that a hostile peer announcing a huge frame costs us little.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">cI")
HEADER_SIZE = _HEADER.size
FRAME_LIMIT = 0xFFFFFFFF  # the largest body a frame's 4-byte length can announce


def too_large_for_a_frame(n: int) -> ProtocolError:
    return ProtocolError(f"message of {n} bytes exceeds the limit of {FRAME_LIMIT} bytes of "
                         "a frame", Codes.MESSAGE_TOO_LARGE, "fetch large values in parts")


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Msg(bytes, enum.Enum):
    """Message type letters.  Upper case mostly from clients, lower case replies."""

    # client -> server
    HELLO = b"H"
    SASL_INITIAL = b"S"
    SASL_RESPONSE = b"s"
    QUERY = b"Q"
    EXECUTE_MANY = b"M"
    FETCH = b"F"
    CLOSE_PORTAL = b"X"
    COMMIT = b"C"
    ROLLBACK = b"R"
    SYNC = b"Y"
    ADMIN = b"W"
    CALL = b"K"
    TERMINATE = b"T"
    CANCEL = b"I"  # stop requests up to n (out of band: not a request, no reply)
    # server -> client
    HELLO_OK = b"h"
    SASL_CHALLENGE = b"A"
    AUTH_OK = b"O"
    DESCRIPTION = b"D"
    ROWS = b"B"
    RESULT = b"r"  # description + rows + completion of a small result, in one frame
    SUSPENDED = b"P"
    COMPLETE = b"Z"
    ERROR = b"E"
    NOTICE = b"N"

    # Members are dict keys on every message (state tables): hash them as the bytes they
    # are, in C, rather than through Enum.__hash__ (a Python call).
    __hash__ = bytes.__hash__


# Type byte (as an int, how indexing a bytearray gives it) -> message type.
_BY_BYTE: dict[int, Msg] = {m.value[0]: m for m in Msg}


class Message(NamedTuple):
    type: Msg
    body: Any


class RawFrame(NamedTuple):
    """A message whose body is left encoded, for the caller to decode a slice at a time
    (``next_event(decode_up_to=...)``; codec.Decoding): a large body decoded at once would
    hold the server's event loop for the whole of it."""

    type: Msg
    body: bytes


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class State(enum.Enum):
    HELLO = "hello"
    SASL = "sasl"
    SASL_RESPONSE = "sasl-response"
    AUTH_OK = "auth-ok"
    READY = "ready"
    CLOSED = "closed"

    # Looked up in the transition tables on every message: identity hashing, in C
    # (members are singletons), not Enum.__hash__.
    __hash__ = object.__hash__


_READY_CLIENT = {m: State.READY for m in (
    Msg.QUERY, Msg.EXECUTE_MANY, Msg.FETCH, Msg.CLOSE_PORTAL, Msg.COMMIT, Msg.ROLLBACK, Msg.SYNC,
    Msg.ADMIN, Msg.CALL,
)}
_READY_SERVER = {m: State.READY for m in (
    Msg.DESCRIPTION, Msg.ROWS, Msg.RESULT, Msg.SUSPENDED, Msg.COMPLETE, Msg.ERROR
)}

# What the client may send in each state, and the state that follows.
CLIENT_TRANSITIONS: dict[State, dict[Msg, State]] = {
    State.HELLO: {Msg.HELLO: State.SASL},
    State.SASL: {Msg.SASL_INITIAL: State.SASL_RESPONSE},
    State.SASL_RESPONSE: {Msg.SASL_RESPONSE: State.READY},
    State.READY: _READY_CLIENT,
    State.CLOSED: {},
}
# What the server may send in each state.  An error before login is fatal.
SERVER_TRANSITIONS: dict[State, dict[Msg, State]] = {
    State.HELLO: {Msg.HELLO_OK: State.SASL, Msg.ERROR: State.CLOSED},
    State.SASL: {Msg.SASL_CHALLENGE: State.AUTH_OK, Msg.ERROR: State.CLOSED},
    State.AUTH_OK: {Msg.AUTH_OK: State.READY, Msg.ERROR: State.CLOSED},
    State.READY: _READY_SERVER,
    State.CLOSED: {},
}


_RESULT_HEADER = codec.array_header(3)


def result_body(description: Any, packed_rows: bytes, rowcount: int, lastrowid: int | None,
                in_transaction: bool) -> bytes:
    """The body of a RESULT (``messages.Result``) from rows already packed (no copy of them
    but the join); the completion's fields are packed as the ``Complete`` they are, without
    building one (the hot path of every small query)."""
    return b"".join((_RESULT_HEADER, codec.pack(description), packed_rows,
                     codec.pack((rowcount, lastrowid, in_transaction))))


def encode_frame(msg: Msg, body: Any) -> bytes:
    """Return the bytes of one frame (no state checks; see :meth:`ProtocolConnection.send`)."""
    payload = codec.pack(body)
    return _HEADER.pack(msg, len(payload)) + payload  # a member is its own 1-byte value


class ProtocolConnection:
    """One end of a Casemate connection, with no I/O.

    Feed received bytes to :meth:`receive_data`, then call :meth:`next_event`
    until it returns :data:`NEED_DATA`.  :meth:`send` returns the bytes to write.
    """

    def __init__(self, role: Role, max_frame: int = DEFAULT_MAX_FRAME,
                 max_send: int | None = None) -> None:
        self.role = role
        self.max_frame = max_frame  # largest frame we accept
        self.max_send = max_send or max_frame  # largest frame the peer accepts
        self.client_state = State.HELLO
        self.server_state = State.HELLO
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.requests = 0  # client requests sent (client) or received (server) since login

    # -- outgoing ---------------------------------------------------------
    def send(self, msg: Msg, body: Any = None) -> bytes:
        """Check that we may send ``msg`` now, advance our state, return its bytes."""
        # Encode and check the size first: a message that cannot be sent leaves the state as is.
        data = encode_frame(msg, body)
        if len(data) - HEADER_SIZE > self.max_send:
            raise ProtocolError(
                f"message of {len(data) - HEADER_SIZE} bytes exceeds the limit of "
                f"{self.max_send} bytes", Codes.MESSAGE_TOO_LARGE,
                "send smaller statements or parameter sets, or batch the work",
            )
        self._advance(msg, sender_is_client=self.role is Role.CLIENT)
        return data

    def send_packed(self, msg: Msg, payload: bytes) -> bytes:
        """Like :meth:`send`, for a body that is already msgpack-encoded (row batches)."""
        if len(payload) > FRAME_LIMIT:
            raise too_large_for_a_frame(len(payload))
        self._advance(msg, sender_is_client=self.role is Role.CLIENT)
        return _HEADER.pack(msg, len(payload)) + payload

    def send_result(self, columns: Any, types: Any, packed_rows: bytes, rowcount: int,
                    lastrowid: int | None, in_transaction: bool) -> bytes:
        """A whole small result in one RESULT frame (``messages.Result``): ``columns`` is
        the cursor's description (each column's name first), ``types`` each column's type
        code (empty: none known), ``packed_rows`` a ROWS body already packed."""
        described = [(c[0], t) for c, t in zip(columns, types or [None] * len(columns),
                                                 strict=False)]
        return self.send_packed(Msg.RESULT, result_body(described, packed_rows, rowcount,
                                                         lastrowid, in_transaction))

    def _advance(self, msg: Msg, sender_is_client: bool) -> None:
        if msg is Msg.NOTICE and not sender_is_client:
            return  # notices may arrive at any moment, in any state
        if msg is Msg.TERMINATE and sender_is_client:
            self.client_state = State.CLOSED
            return
        if msg is Msg.CANCEL and sender_is_client and self.client_state is State.READY:
            return  # out of band: no state change, not counted as a request
        if sender_is_client:
            table, state = CLIENT_TRANSITIONS, self.client_state
        else:
            table, state = SERVER_TRANSITIONS, self.server_state
        nxt = table[state].get(msg)
        if nxt is None:
            who = "client" if sender_is_client else "server"
            raise ProtocolError(
                f"{who} message {msg.name} is not allowed in state {state.value}",
                Codes.PROTOCOL_VIOLATION,
            )
        if sender_is_client:
            if state is State.READY:
                self.requests += 1
            self.client_state = nxt
        else:
            self.server_state = nxt

    # -- incoming ---------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (copied: the caller may reuse its buffer); empty means the
        peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into messages."""
        return len(self._buf) - self._pos

    @property
    def eof(self) -> bool:
        return self._eof

    def next_event(self, decode_up_to: int = 0) -> Message | RawFrame | _NeedData:
        """Return the next complete message, or NEED_DATA. Raises ProtocolError.  With
        ``decode_up_to``, a message whose body is longer comes as a :class:`RawFrame`."""
        avail = len(self._buf) - self._pos
        if avail == 0:
            return self._need_data()
        # Check the type byte at once: no waiting for the body of a frame we cannot use.
        msg = _BY_BYTE.get(self._buf[self._pos])
        if msg is None:
            tbyte = bytes(self._buf[self._pos : self._pos + 1])
            raise ProtocolError(f"unknown message type {tbyte!r}", Codes.PROTOCOL_VIOLATION)
        if avail < HEADER_SIZE:
            return self._need_data()
        _, length = _HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame:
            raise ProtocolError(
                f"peer announced a {length}-byte message; the limit is {self.max_frame} bytes",
                Codes.MESSAGE_TOO_LARGE,
            )
        if avail < HEADER_SIZE + length:
            return self._need_data()
        start = self._pos + HEADER_SIZE
        self._pos = start + length
        if 0 < decode_up_to < length:
            body = bytes(self._buf[start : start + length])
            self._advance(msg, sender_is_client=self.role is Role.SERVER)
            return RawFrame(msg, body)
        self._advance(msg, sender_is_client=self.role is Role.SERVER)
        try:
            # Decoded in place: the values decoded are copies, and the view is released
            # before the buffer changes again.
            with memoryview(self._buf) as view:
                body = (codec.unpack_wrapped if self.role is Role.SERVER else codec.unpack)(
                    view[start : start + length])
        except ValueError as e:
            raise ProtocolError(f"malformed {msg.name} message: {e}",
                                Codes.PROTOCOL_VIOLATION) from e
        return Message(msg, body)

    def _need_data(self) -> _NeedData:
        if self._eof and self.buffered:
            raise ProtocolError(
                "connection closed in the middle of a message", Codes.CONNECTION_FAILURE
            )
        return NEED_DATA


# The twin of the class above, as typed compiled code (_core.pyx), where pip built it:
# same methods, bytes and errors; this module's class stays the reference, and what
# CASEMATE_PURE=1 runs.
PureProtocolConnection = ProtocolConnection
PROTOCOL_CORE = "pure Python: CASEMATE_PURE is set"
if os.environ.get("CASEMATE_PURE", "") in ("", "0"):
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError as _e:
        PROTOCOL_CORE = f"pure Python: not built ({_e})"
    else:
        _core.configure(globals())
        ProtocolConnection = _core.ProtocolConnection  # type: ignore[misc]
        PROTOCOL_CORE = "compiled"
