"""Sans-I/O protocol core shared by the server and both clients (no socket, no asyncio)."""

from .codec import pack, unpack
from .core import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    NEED_DATA,
    PROTOCOL_VERSION,
    Message,
    Msg,
    ProtocolConnection,
    RawFrame,
    Role,
    State,
    encode_frame,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Message",
    "Msg",
    "ProtocolConnection",
    "RawFrame",
    "Role",
    "State",
    "encode_frame",
    "pack",
    "unpack",
]
