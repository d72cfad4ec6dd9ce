# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The protocol core's framing and state machines as typed compiled code.

The twin of :class:`casemate.protocol.core.ProtocolConnection`, which stays the
reference: the same methods, attributes, errors and bytes (tests/protocol run every
test on both, and a property test compares them frame by frame).  What differs is
only how: the receive buffer, its read position and the header are C values, a frame
of a few kilobytes is copied out of the buffer instead of viewed through a
memoryview, and the reply frame is built in one allocation.  The message codec is
core.py's (``codec.pack``/``unpack``: msgpack's C extension), so values are encoded
and decoded by the same code on both paths.

Selected by core.py at import unless ``CASEMATE_PURE`` is set.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

# Filled in by configure() (core.py's own objects, so both paths share them).
cdef object Msg_NOTICE, Msg_TERMINATE, Msg_CANCEL, Msg_RESULT
cdef object S_HELLO, S_READY, S_CLOSED
cdef dict CLIENT_T, SERVER_T
cdef list BY_BYTE  # 256 entries: the message type for a type byte, or None
cdef object ProtocolError_, Codes_, NEED, Message_, RawFrame_, ROLE_CLIENT, ROLE_SERVER, too_large_
cdef object pack_, unpack_, unpack_wrapped_
cdef object packers_  # codec._packers: one msgpack Packer per thread
cdef object unpackb, hook_, hook_wrapped_, wrap_error  # msgpack.unpackb, codec's ext hooks
cdef tuple AS_MALFORMED, AS_MALFORMED_TOO  # the exceptions codec._unpack words as ValueError
cdef object tuple_new = tuple.__new__

# Frames up to this size are copied out of the receive buffer (one small allocation);
# larger ones (row batches) are decoded in place through a memoryview, as core.py does.
DEF COPY_LIMIT = 65536
DEF HEADER = 5
DEF FRAME_LIMIT = 0xFFFFFFFF  # core.FRAME_LIMIT


cdef inline bytes _pack(object value):
    """codec.pack without its Python frame: the thread's Packer, and codec.pack itself for
    what that refuses (integers past 64 bits)."""
    try:
        return packers_.pack(value)
    except OverflowError:
        return pack_(value)


def configure(ns):
    """Take core.py's message types, states, tables, errors and codec (called once)."""
    global Msg_NOTICE, Msg_TERMINATE, Msg_CANCEL, Msg_RESULT, S_HELLO, S_READY, S_CLOSED, CLIENT_T, SERVER_T
    global BY_BYTE, ProtocolError_, Codes_, NEED, Message_, ROLE_CLIENT, ROLE_SERVER, too_large_
    global pack_, unpack_, unpack_wrapped_
    Msg = ns["Msg"]
    Msg_NOTICE, Msg_TERMINATE, Msg_CANCEL = Msg.NOTICE, Msg.TERMINATE, Msg.CANCEL
    Msg_RESULT = Msg.RESULT
    S_HELLO, S_READY, S_CLOSED = ns["State"].HELLO, ns["State"].READY, ns["State"].CLOSED
    CLIENT_T, SERVER_T = ns["CLIENT_TRANSITIONS"], ns["SERVER_TRANSITIONS"]
    BY_BYTE = [None] * 256
    for m in Msg:
        BY_BYTE[m.value[0]] = m
    ProtocolError_, Codes_ = ns["ProtocolError"], ns["Codes"]
    too_large_ = ns["too_large_for_a_frame"]
    NEED, Message_ = ns["NEED_DATA"], ns["Message"]
    global RawFrame_
    RawFrame_ = ns["RawFrame"]
    ROLE_CLIENT, ROLE_SERVER = ns["Role"].CLIENT, ns["Role"].SERVER
    codec = ns["codec"]
    pack_, unpack_, unpack_wrapped_ = codec.pack, codec.unpack, codec.unpack_wrapped
    global packers_
    packers_ = codec._packers
    # Decoding calls msgpack directly, as codec._unpack does (one Python frame fewer per
    # message); the twin test holds the two to the same values and error messages.
    global unpackb, hook_, hook_wrapped_, AS_MALFORMED, AS_MALFORMED_TOO
    unpackb = codec.msgpack.unpackb
    hook_, hook_wrapped_ = codec._ext_hook, codec._ext_hook_wrapped
    AS_MALFORMED, AS_MALFORMED_TOO = codec.MALFORMED, codec.MALFORMED_TOO


cdef inline bytes _frame(object msg, bytes payload):
    """Type byte + big-endian length + payload, in one new bytes object."""
    cdef Py_ssize_t n = len(payload)
    if n > FRAME_LIMIT:  # (a send's own limit is lower; send_packed has none)
        raise too_large_(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + HEADER)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    if not isinstance(msg, bytes) or len(<bytes>msg) != 1:
        raise TypeError(f"not a message type: {msg!r}")
    p[0] = <unsigned char>PyBytes_AS_STRING(<bytes>msg)[0]  # a Msg is its one-byte value
    p[1] = (n >> 24) & 0xFF
    p[2] = (n >> 16) & 0xFF
    p[3] = (n >> 8) & 0xFF
    p[4] = n & 0xFF
    memcpy(p + HEADER, PyBytes_AS_STRING(payload), n)
    return out


@cython.auto_pickle(False)  # a copy would share the buffer its twin compacts
cdef class ProtocolConnection:
    """One end of a Casemate connection, with no I/O (see core.py's twin for the contract)."""

    cdef public object role
    cdef public Py_ssize_t max_frame
    cdef public Py_ssize_t max_send
    cdef public object client_state
    cdef public object server_state
    cdef public long long requests
    cdef readonly bytearray _buf  # (read by the property tests: compaction bound)
    cdef Py_ssize_t _pos
    cdef bint _eof
    cdef bint _client  # role is CLIENT

    def __cinit__(self):
        # Before any __init__ (or without one: __new__, a subclass that skips it), the
        # buffer the C code reads through a pointer exists.
        self._buf = bytearray()
        self._pos = 0

    def __copy__(self):
        raise TypeError("a protocol connection cannot be copied")

    def __deepcopy__(self, memo):
        raise TypeError("a protocol connection cannot be copied")

    def __init__(self, role, max_frame=16 * 1024 * 1024, max_send=None):
        if ROLE_CLIENT is None:
            raise RuntimeError("casemate.protocol._core is used through casemate.protocol.core")
        self.role = role
        self._client = role is ROLE_CLIENT
        self.max_frame = max_frame
        self.max_send = max_send or max_frame
        self.client_state = S_HELLO
        self.server_state = S_HELLO
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.requests = 0

    # -- outgoing ---------------------------------------------------------
    def send(self, msg, body=None):
        """Check that we may send ``msg`` now, advance our state, return its bytes."""
        cdef bytes payload = _pack(body)  # (codec.pack without its frame)
        cdef Py_ssize_t n = len(payload)
        if n > self.max_send:
            raise ProtocolError_(
                f"message of {n} bytes exceeds the limit of {self.max_send} bytes",
                Codes_.MESSAGE_TOO_LARGE,
                "send smaller statements or parameter sets, or batch the work",
            )
        self._advance(msg, self._client)
        return _frame(msg, payload)

    def send_packed(self, msg, payload):
        """Like :meth:`send`, for a body that is already msgpack-encoded (row batches)."""
        self._advance(msg, self._client)
        return _frame(msg, payload if type(payload) is bytes else bytes(payload))

    def send_result(self, columns, types, packed_rows, rowcount, lastrowid, in_transaction):
        """A whole small result in one RESULT frame, as core.py's twin builds it through
        messages.Result.pack: [description, rows, completion], the rows already packed."""
        cdef Py_ssize_t i, ncols = len(columns)
        cdef list described = [None] * ncols
        cdef bint typed = bool(types)
        if typed and len(types) < ncols:
            ncols = len(types)  # (zip's length, as in the twin)
            described = described[:ncols]
        for i in range(ncols):
            described[i] = (columns[i][0], types[i] if typed else None)
        cdef bytes desc = _pack(described)
        cdef bytes rows = packed_rows if type(packed_rows) is bytes else bytes(packed_rows)
        cdef bytes comp = _pack((rowcount, lastrowid, in_transaction))
        cdef Py_ssize_t nd = len(desc), nr = len(rows), nc = len(comp)
        cdef Py_ssize_t n = 1 + nd + nr + nc
        if n > FRAME_LIMIT:
            raise too_large_(n)
        self._advance(Msg_RESULT, self._client)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n + HEADER)
        cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
        p[0] = <unsigned char>PyBytes_AS_STRING(<bytes>Msg_RESULT)[0]
        p[1] = (n >> 24) & 0xFF
        p[2] = (n >> 16) & 0xFF
        p[3] = (n >> 8) & 0xFF
        p[4] = n & 0xFF
        p[5] = 0x93  # a msgpack array of three
        memcpy(p + 6, PyBytes_AS_STRING(desc), nd)
        memcpy(p + 6 + nd, PyBytes_AS_STRING(rows), nr)
        memcpy(p + 6 + nd + nr, PyBytes_AS_STRING(comp), nc)
        return out

    cdef int _advance(self, object msg, bint sender_is_client) except -1:
        cdef dict row
        cdef object state, nxt
        if msg is Msg_NOTICE and not sender_is_client:
            return 0
        if msg is Msg_TERMINATE and sender_is_client:
            self.client_state = S_CLOSED
            return 0
        if msg is Msg_CANCEL and sender_is_client and self.client_state is S_READY:
            return 0
        if sender_is_client:
            state = self.client_state
            row = <dict>CLIENT_T[state]
        else:
            state = self.server_state
            row = <dict>SERVER_T[state]
        nxt = row.get(msg)
        if nxt is None:
            who = "client" if sender_is_client else "server"
            raise ProtocolError_(
                f"{who} message {msg.name} is not allowed in state {state.value}",
                Codes_.PROTOCOL_VIOLATION,
            )
        if sender_is_client:
            if state is S_READY:
                self.requests += 1
            self.client_state = nxt
        else:
            self.server_state = nxt
        return 0

    # -- incoming ---------------------------------------------------------
    def receive_data(self, data):
        """Add received bytes (copied: the caller may reuse its buffer); empty means the
        peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos > PyByteArray_GET_SIZE(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self):
        """Bytes received but not yet turned into messages."""
        return max(PyByteArray_GET_SIZE(self._buf) - self._pos, 0)

    @property
    def eof(self):
        return self._eof

    def next_event(self, Py_ssize_t decode_up_to=0):
        """Return the next complete message, or NEED_DATA. Raises ProtocolError.  With
        ``decode_up_to``, a message whose body is longer comes as a RawFrame."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._buf)
        cdef Py_ssize_t avail = size - self._pos
        cdef unsigned char *p
        cdef Py_ssize_t length, start
        if avail <= 0:
            if avail < 0:  # the buffer was emptied from outside (it is readable): nothing left
                self._pos = size
            return self._need_data()
        p = <unsigned char *>PyByteArray_AS_STRING(self._buf) + self._pos
        msg = BY_BYTE[p[0]]
        if msg is None:
            raise ProtocolError_(f"unknown message type {bytes(p[:1])!r}",
                                 Codes_.PROTOCOL_VIOLATION)
        if avail < HEADER:
            return self._need_data()
        length = (<Py_ssize_t>p[1] << 24) | (<Py_ssize_t>p[2] << 16) | (<Py_ssize_t>p[3] << 8) \
            | <Py_ssize_t>p[4]
        if length > self.max_frame:
            raise ProtocolError_(
                f"peer announced a {length}-byte message; the limit is {self.max_frame} bytes",
                Codes_.MESSAGE_TOO_LARGE,
            )
        if avail < HEADER + length:
            return self._need_data()
        start = self._pos + HEADER
        self._pos = start + length
        if 0 < decode_up_to < length:
            raw = PyBytes_FromStringAndSize(<char *>p + HEADER, length)
            self._advance(msg, not self._client)
            return tuple_new(RawFrame_, (msg, raw))
        # A small frame is copied out before _advance: it may run Python code (a state's
        # hash), which may resize the buffer that ``p`` points into.
        small = PyBytes_FromStringAndSize(<char *>p + HEADER, length) \
            if length <= COPY_LIMIT else None
        self._advance(msg, not self._client)
        hook = hook_ if self._client else hook_wrapped_
        try:
            try:
                if small is not None:
                    body = unpackb(small, ext_hook=hook, raw=False, use_list=False,
                                   strict_map_key=not self._client)
                else:
                    with memoryview(self._buf) as view:
                        body = unpackb(view[start : start + length], ext_hook=hook, raw=False,
                                       use_list=False, strict_map_key=not self._client)
            except AS_MALFORMED as e:  # (codec._unpack's wording, for the same message)
                raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e
            except AS_MALFORMED_TOO as e:
                raise ValueError(f"malformed value: {str(e) or type(e).__name__}") from e
        except ValueError as e:
            raise ProtocolError_(f"malformed {msg.name} message: {e}",
                                 Codes_.PROTOCOL_VIOLATION) from e
        return tuple_new(Message_, (msg, body))

    cdef object _need_data(self):
        if self._eof and PyByteArray_GET_SIZE(self._buf) - self._pos:
            raise ProtocolError_(
                "connection closed in the middle of a message", Codes_.CONNECTION_FAILURE
            )
        return NEED
