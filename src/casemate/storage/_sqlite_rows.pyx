# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled row path of the SQLite backend: a read-only statement stepped on the
connection's own SQLite handle, its rows written straight into msgpack.

Pure-Python twin and reference: ``sqlite3.Cursor.fetchmany`` + ``codec.pack``, the
path ``casemate.storage.sqlite_rows`` falls back to (``CASEMATE_PURE=1`` forces it).
Python's ``sqlite3`` turns every value into a Python object that msgpack then encodes
again; here a row goes from SQLite's column accessors into the output buffer, with the
GIL released while a batch is stepped and written.

SQLite itself is not linked in: its functions are looked up (``dlsym``) in the library
Python's own ``_sqlite3`` module uses, so both always drive the same SQLite.  The
``sqlite3*`` handle is the first field of CPython's ``pysqlite_Connection`` (3.11-3.14);
``handle()`` checks that what it read is that connection before anything uses it.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.limits cimport INT_MAX
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, strlen

import sys

cdef extern from "<dlfcn.h>":
    void *dlopen(const char *filename, int flag)
    void *dlsym(void *handle, const char *symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

cdef enum:
    SQLITE_OK = 0
    SQLITE_ROW = 100
    SQLITE_DONE = 101
    SQLITE_INTEGER = 1
    SQLITE_FLOAT = 2
    SQLITE_TEXT = 3
    SQLITE_BLOB = 4
    SQLITE_NULL = 5

ctypedef void sqlite3
ctypedef void sqlite3_stmt

ctypedef int (*f_prepare)(sqlite3*, const char*, int, sqlite3_stmt**, const char**) noexcept nogil
ctypedef int (*f_stmt_int)(sqlite3_stmt*) noexcept nogil
ctypedef int (*f_col_int)(sqlite3_stmt*, int) noexcept nogil
ctypedef int64_t (*f_col_i64)(sqlite3_stmt*, int) noexcept nogil
ctypedef double (*f_col_dbl)(sqlite3_stmt*, int) noexcept nogil
ctypedef const void *(*f_col_ptr)(sqlite3_stmt*, int) noexcept nogil
ctypedef const char *(*f_col_str)(sqlite3_stmt*, int) noexcept nogil
ctypedef int (*f_bind_i64)(sqlite3_stmt*, int, int64_t) noexcept nogil
ctypedef int (*f_bind_dbl)(sqlite3_stmt*, int, double) noexcept nogil
ctypedef int (*f_bind_text)(sqlite3_stmt*, int, const char*, int, void*) noexcept nogil
ctypedef int (*f_bind_null)(sqlite3_stmt*, int) noexcept nogil
ctypedef const char *(*f_db_str)(sqlite3*) noexcept nogil
ctypedef int (*f_db_int)(sqlite3*) noexcept nogil
ctypedef const char *(*f_db_filename)(sqlite3*, const char*) noexcept nogil
ctypedef int64_t (*f_db_i64)(sqlite3*) noexcept nogil
ctypedef void *(*f_col_val)(sqlite3_stmt*, int) noexcept nogil
ctypedef int (*f_val_int)(void*) noexcept nogil
ctypedef int64_t (*f_val_i64)(void*) noexcept nogil
ctypedef double (*f_val_dbl)(void*) noexcept nogil
ctypedef const void *(*f_val_ptr)(void*) noexcept nogil
ctypedef void *(*f_db_mutex)(sqlite3*) noexcept nogil
ctypedef void (*f_mutex)(void*) noexcept nogil

cdef f_prepare _prepare
cdef f_stmt_int _step, _finalize, _reset, _clear_bindings, _column_count, _readonly
cdef f_stmt_int _isexplain, _bind_parameter_count
cdef f_col_int _column_type, _column_bytes
cdef f_col_i64 _column_int64
cdef f_col_dbl _column_double
cdef f_col_ptr _column_blob
cdef f_col_str _column_text, _column_name, _column_decltype
cdef f_bind_i64 _bind_int64
cdef f_bind_dbl _bind_double
cdef f_bind_text _bind_text, _bind_blob
cdef f_bind_null _bind_null
cdef f_db_str _errmsg
cdef f_db_int _errcode, _extended_errcode, _total_changes, _get_autocommit
cdef f_db_filename _db_filename
cdef f_db_i64 _last_insert_rowid
cdef f_col_val _column_value
cdef f_val_int _value_type, _value_bytes
cdef f_val_i64 _value_int64
cdef f_val_dbl _value_double
cdef f_val_ptr _value_text, _value_blob
cdef f_db_mutex _db_mutex
cdef f_mutex _mutex_enter, _mutex_leave

# SQLITE_TRANSIENT: SQLite copies a bound value (the Python object may go away).
cdef void *TRANSIENT = <void*>-1


cdef void *_sym(void *lib, const char *name) except NULL:
    cdef void *p = dlsym(lib, name)
    if p == NULL:
        raise ImportError(f"SQLite function {name.decode()} not found in Python's sqlite3 library")
    return p


def _load(str path):
    """Look SQLite's functions up in the library of Python's own ``_sqlite3`` module."""
    global _prepare, _step, _finalize, _reset, _clear_bindings, _column_count, _readonly
    global _isexplain, _bind_parameter_count, _column_type, _column_bytes, _column_int64
    global _column_double, _column_blob, _column_text, _column_name, _column_decltype
    global _bind_int64, _bind_double, _bind_text, _bind_blob, _bind_null, _errmsg, _errcode
    global _extended_errcode, _total_changes, _get_autocommit, _db_filename, _last_insert_rowid
    global _column_value, _value_type, _value_bytes, _value_int64, _value_double, _value_text
    global _value_blob, _db_mutex, _mutex_enter, _mutex_leave
    cdef bytes p = path.encode()
    cdef void *lib = dlopen(p, RTLD_NOW | RTLD_NOLOAD)  # already loaded: the same SQLite
    if lib == NULL:
        raise ImportError(f"{path} is not loaded")
    _prepare = <f_prepare>_sym(lib, b"sqlite3_prepare_v2")
    _step = <f_stmt_int>_sym(lib, b"sqlite3_step")
    _finalize = <f_stmt_int>_sym(lib, b"sqlite3_finalize")
    _reset = <f_stmt_int>_sym(lib, b"sqlite3_reset")
    _clear_bindings = <f_stmt_int>_sym(lib, b"sqlite3_clear_bindings")
    _column_count = <f_stmt_int>_sym(lib, b"sqlite3_column_count")
    _readonly = <f_stmt_int>_sym(lib, b"sqlite3_stmt_readonly")
    _isexplain = <f_stmt_int>_sym(lib, b"sqlite3_stmt_isexplain")
    _bind_parameter_count = <f_stmt_int>_sym(lib, b"sqlite3_bind_parameter_count")
    _column_type = <f_col_int>_sym(lib, b"sqlite3_column_type")
    _column_bytes = <f_col_int>_sym(lib, b"sqlite3_column_bytes")
    _column_int64 = <f_col_i64>_sym(lib, b"sqlite3_column_int64")
    _column_double = <f_col_dbl>_sym(lib, b"sqlite3_column_double")
    _column_blob = <f_col_ptr>_sym(lib, b"sqlite3_column_blob")
    _column_text = <f_col_str>_sym(lib, b"sqlite3_column_text")
    _column_name = <f_col_str>_sym(lib, b"sqlite3_column_name")
    _column_decltype = <f_col_str>_sym(lib, b"sqlite3_column_decltype")
    _bind_int64 = <f_bind_i64>_sym(lib, b"sqlite3_bind_int64")
    _bind_double = <f_bind_dbl>_sym(lib, b"sqlite3_bind_double")
    _bind_text = <f_bind_text>_sym(lib, b"sqlite3_bind_text")
    _bind_blob = <f_bind_text>_sym(lib, b"sqlite3_bind_blob")
    _bind_null = <f_bind_null>_sym(lib, b"sqlite3_bind_null")
    _errmsg = <f_db_str>_sym(lib, b"sqlite3_errmsg")
    _errcode = <f_db_int>_sym(lib, b"sqlite3_errcode")
    _extended_errcode = <f_db_int>_sym(lib, b"sqlite3_extended_errcode")
    _total_changes = <f_db_int>_sym(lib, b"sqlite3_total_changes")
    _get_autocommit = <f_db_int>_sym(lib, b"sqlite3_get_autocommit")
    _db_filename = <f_db_filename>_sym(lib, b"sqlite3_db_filename")
    _last_insert_rowid = <f_db_i64>_sym(lib, b"sqlite3_last_insert_rowid")
    _column_value = <f_col_val>_sym(lib, b"sqlite3_column_value")
    _value_type = <f_val_int>_sym(lib, b"sqlite3_value_type")
    _value_bytes = <f_val_int>_sym(lib, b"sqlite3_value_bytes")
    _value_int64 = <f_val_i64>_sym(lib, b"sqlite3_value_int64")
    _value_double = <f_val_dbl>_sym(lib, b"sqlite3_value_double")
    _value_text = <f_val_ptr>_sym(lib, b"sqlite3_value_text")
    _value_blob = <f_val_ptr>_sym(lib, b"sqlite3_value_blob")
    _db_mutex = <f_db_mutex>_sym(lib, b"sqlite3_db_mutex")
    _mutex_enter = <f_mutex>_sym(lib, b"sqlite3_mutex_enter")
    _mutex_leave = <f_mutex>_sym(lib, b"sqlite3_mutex_leave")


cdef inline sqlite3 *_raw_handle(object conn) noexcept:
    # pysqlite_Connection: PyObject_HEAD, then ``sqlite3 *db`` (CPython 3.11 to 3.14).
    return (<sqlite3**>((<char*><PyObject*>conn) + sizeof(PyObject)))[0]


def handle_matches(object conn, str filename) -> bool:
    """Whether the handle read from ``conn`` (an open sqlite3.Connection) is its SQLite
    connection: the same main file, the same change count and transaction state."""
    cdef sqlite3 *db = _raw_handle(conn)
    if db == NULL:
        return False
    cdef const char *name = _db_filename(db, b"main")
    if name == NULL or name.decode("utf-8", "replace") != filename:
        return False
    return (_total_changes(db) == conn.total_changes
            and (_get_autocommit(db) == 0) == conn.in_transaction)


# -- the output buffer -------------------------------------------------------------------
cdef struct Out:
    char *buf
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(Out *o, Py_ssize_t need) noexcept nogil:
    cdef Py_ssize_t cap = o.cap * 2
    cdef char *p
    if cap < o.len + need:
        cap = o.len + need + 4096
    p = <char*>realloc(o.buf, cap)
    if p == NULL:
        return -1
    o.buf = p
    o.cap = cap
    return 0


cdef inline void _be16(char *p, uint64_t v) noexcept nogil:
    p[0] = <char>(v >> 8)
    p[1] = <char>v


cdef inline void _be32(char *p, uint64_t v) noexcept nogil:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline void _be64(char *p, uint64_t v) noexcept nogil:
    _be32(p, v >> 32)
    _be32(p + 4, v & <uint64_t>4294967295ULL)


cdef inline int _int(Out *o, int64_t v) noexcept nogil:
    # msgpack-python's choice: the shortest form, unsigned for v >= 0.
    cdef char *p
    if o.cap - o.len < 9 and _grow(o, 9):
        return -1
    p = o.buf + o.len
    if v >= 0:
        if v < 128:
            p[0] = <char>v
            o.len += 1
        elif v < 0x100:
            p[0] = <char>0xcc
            p[1] = <char>v
            o.len += 2
        elif v < 0x10000:
            p[0] = <char>0xcd
            _be16(p + 1, <uint64_t>v)
            o.len += 3
        elif v < <int64_t>4294967296LL:
            p[0] = <char>0xce
            _be32(p + 1, <uint64_t>v)
            o.len += 5
        else:
            p[0] = <char>0xcf
            _be64(p + 1, <uint64_t>v)
            o.len += 9
    else:
        if v >= -32:
            p[0] = <char>(<uint8_t>(0xe0 | (v + 32)))
            o.len += 1
        elif v >= -128:
            p[0] = <char>0xd0
            p[1] = <char>v
            o.len += 2
        elif v >= -32768:
            p[0] = <char>0xd1
            _be16(p + 1, <uint64_t>v)
            o.len += 3
        elif v >= <int64_t>(-2147483648LL):
            p[0] = <char>0xd2
            _be32(p + 1, <uint64_t>v)
            o.len += 5
        else:
            p[0] = <char>0xd3
            _be64(p + 1, <uint64_t>v)
            o.len += 9
    return 0


cdef inline int _double(Out *o, double v) noexcept nogil:
    cdef uint64_t bits
    if o.cap - o.len < 9 and _grow(o, 9):
        return -1
    memcpy(&bits, &v, 8)
    o.buf[o.len] = <char>0xcb
    _be64(o.buf + o.len + 1, bits)
    o.len += 9
    return 0


cdef inline int _raw(Out *o, const char *data, Py_ssize_t n, int is_text) noexcept nogil:
    # str: fixstr/str8/16/32 (msgpack-python with use_bin_type=True); bytes: bin8/16/32.
    cdef char *p
    if o.cap - o.len < n + 5 and _grow(o, n + 5):
        return -1
    p = o.buf + o.len
    if is_text and n < 32:
        p[0] = <char>(0xa0 | n)
        o.len += 1
    elif n < 0x100:
        p[0] = <char>(0xd9 if is_text else 0xc4)
        p[1] = <char>n
        o.len += 2
    elif n < 0x10000:
        p[0] = <char>(0xda if is_text else 0xc5)
        _be16(p + 1, <uint64_t>n)
        o.len += 3
    else:
        p[0] = <char>(0xdb if is_text else 0xc6)
        _be32(p + 1, <uint64_t>n)
        o.len += 5
    if n:
        memcpy(o.buf + o.len, data, n)
    o.len += n
    return 0


cdef inline int _array_header(Out *o, Py_ssize_t n) noexcept nogil:
    if o.cap - o.len < 5 and _grow(o, 5):
        return -1
    if n < 16:
        o.buf[o.len] = <char>(0x90 | n)
        o.len += 1
    elif n < 0x10000:
        o.buf[o.len] = <char>0xdc
        _be16(o.buf + o.len + 1, <uint64_t>n)
        o.len += 3
    else:
        o.buf[o.len] = <char>0xdd
        _be32(o.buf + o.len + 1, <uint64_t>n)
        o.len += 5
    return 0


cdef Py_ssize_t _bad_utf8(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """Offset of the first byte that Python's strict UTF-8 decoder refuses, or -1."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return i
        if c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return i
            i += 2
            continue
        if i + 1 >= n:
            return i
        c1 = s[i + 1]
        if c < 0xF0:
            if (c1 & 0xC0) != 0x80 or (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F):
                return i
            if i + 2 >= n or (s[i + 2] & 0xC0) != 0x80:
                return i
            i += 3
            continue
        if (c1 & 0xC0) != 0x80 or (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):
            return i
        if i + 3 >= n or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
            return i
        i += 4
    return -1


# What a batch stopped on (besides a full batch): the end, an error, bad text, no memory.
cdef enum:
    _FULL = 0
    _END = 1
    _ERROR = 2
    _BADTEXT = 3
    _NOMEM = 4


cdef class Cache


cdef class Statement:
    """One read-only statement prepared on a ``sqlite3.Connection``'s handle, stepped to
    its first row (as ``Connection.execute`` does, so its errors come from execute)."""

    cdef sqlite3 *_db
    cdef sqlite3_stmt *_st
    cdef object _conn  # keeps the connection (and so its handle) alive
    cdef int _ncol
    cdef int _has_row
    cdef readonly object description
    cdef readonly object lastrowid
    cdef int _bad_col
    cdef Cache _cache  # where the statement goes back to when closed
    cdef str _sql
    cdef bint _busy  # being stepped without the GIL: close() waits for the step to end
    cdef bint _close_pending

    def __dealloc__(self):
        if self._st != NULL:
            _finalize(self._st)
            self._st = NULL

    def close(self):
        """Give the statement back to its cache, reset, or finalize it (idempotent)."""
        cdef sqlite3_stmt *st = self._st
        if st == NULL:
            return
        if self._busy:  # another thread steps it: it finalizes it when done
            self._close_pending = True
            return
        self._st = NULL
        self._has_row = 0
        if self._cache is not None and self._sql is not None and not self._cache._closed:
            with nogil:
                _reset(st)  # ends its read of the database
                _clear_bindings(st)
            self._cache._put(self._sql, <size_t>st)
        else:
            with nogil:
                _finalize(st)

    @property
    def has_row(self) -> bool:
        return bool(self._has_row)

    def _first_step(self):
        cdef int rc
        cdef sqlite3_stmt *st
        self._busy = True
        st = self._st
        with nogil:
            rc = _step(st)
        self._end_busy()
        if rc == SQLITE_ROW:
            self._has_row = 1
        elif rc == SQLITE_DONE:
            self._has_row = 0
            _reset(self._st)  # ends its read of the database now, as sqlite3 does
        else:
            self._fail()

    cdef _fail(self):
        code, ext, msg = _errcode(self._db), _extended_errcode(self._db), _errmsg(self._db)
        self._sql = None  # not kept: finalized
        self.close()
        raise _engine_error(code, ext, msg.decode("utf-8", "replace"))

    def first_types(self):
        """The Python types of the current row's values (None for NULL), for the
        description's type codes."""
        cdef int i, t
        out = []
        if not self._has_row:
            return out
        for i in range(self._ncol):
            t = _column_type(self._st, i)
            out.append(None if t == SQLITE_NULL else int if t == SQLITE_INTEGER
                        else float if t == SQLITE_FLOAT else str if t == SQLITE_TEXT else bytes)
        return out

    def pack(self, Py_ssize_t max_rows, Py_ssize_t max_bytes):
        """Up to ``max_rows`` rows (stopping after the row that passes ``max_bytes``),
        as the msgpack array of one msgpack array of rows: ``(body, rows, more)``."""
        cdef Out o
        cdef Py_ssize_t n = 0, start = 10, i
        cdef int stop = _FULL, rc = SQLITE_ROW, t, nb
        cdef sqlite3_stmt *st = self._st
        cdef int ncol = self._ncol
        cdef const char *data
        cdef void *v
        cdef void *mutex = _db_mutex(self._db)
        if st == NULL or not self._has_row:
            return b"\x90", 0, False  # no rows: an empty array, as the pure path sends
        if max_rows <= 0:
            return b"\x90", 0, True
        self._conn.total_changes  # raises ProgrammingError if the connection was closed
        o.cap = 64 * 1024
        o.buf = <char*>malloc(o.cap)
        if o.buf == NULL:
            raise MemoryError()
        o.len = start  # room for the two array headers, written last
        self._busy = True  # (set while holding the GIL, before the statement is read)
        st = self._st
        try:
            with nogil:
                while True:
                    if _array_header(&o, ncol):
                        stop = _NOMEM
                        break
                    # The row's values read under the connection's mutex, taken once
                    # (each sqlite3_column_* call would lock and unlock it again).
                    _mutex_enter(mutex)
                    for i in range(ncol):
                        v = _column_value(st, i)
                        t = _value_type(v)
                        if t == SQLITE_INTEGER:
                            rc = _int(&o, _value_int64(v))
                        elif t == SQLITE_FLOAT:
                            rc = _double(&o, _value_double(v))
                        elif t == SQLITE_TEXT:
                            data = <const char*>_value_text(v)
                            nb = _value_bytes(v)
                            if data == NULL and nb:
                                rc = -1
                            elif _bad_utf8(<const unsigned char*>data, nb) >= 0:
                                self._bad_col = i
                                stop = _BADTEXT
                                break
                            else:
                                rc = _raw(&o, data, nb, 1)
                        elif t == SQLITE_BLOB:
                            data = <const char*>_value_blob(v)
                            nb = _value_bytes(v)
                            rc = -1 if data == NULL and nb else _raw(&o, data, nb, 0)
                        else:
                            if o.cap - o.len < 1 and _grow(&o, 1):
                                rc = -1
                            else:
                                o.buf[o.len] = <char>0xc0
                                o.len += 1
                                rc = 0
                        if rc:
                            stop = _NOMEM
                            break
                    _mutex_leave(mutex)
                    if stop != _FULL:
                        break
                    n += 1
                    rc = _step(st)
                    if rc != SQLITE_ROW:
                        if rc == SQLITE_DONE:
                            stop = _END
                            _reset(st)
                        else:
                            stop = _ERROR
                        break
                    if n >= max_rows or o.len - start >= max_bytes:
                        break
            self._end_busy()
            if stop == _NOMEM:
                raise MemoryError()
            if stop == _BADTEXT:
                self._has_row = 0
                raise _bad_text(self, self._bad_col)
            if stop == _ERROR:
                self._fail()
            self._has_row = stop == _FULL
            # Headers right-aligned before the rows: array of one array of n rows.
            hdr = _header(n)
            start -= len(hdr)
            memcpy(o.buf + start, <const char*>hdr, len(hdr))
            return PyBytes_FromStringAndSize(o.buf + start, o.len - start), n, bool(self._has_row)
        finally:
            self._busy = False
            free(o.buf)

    cdef _end_busy(self):
        # The step is over; a close() that came from another thread meanwhile happens now.
        self._busy = False
        if self._close_pending:
            self._close_pending = False
            self._sql = None  # finalized: its connection may be closing
            self.close()
            raise _make_error(21, 21, "the statement was closed while its rows were read")

    def rows(self, Py_ssize_t max_rows):
        """Up to ``max_rows`` rows as tuples of Python values (what sqlite3 would give)."""
        cdef list out = []
        cdef int rc, i, t, nb
        cdef const char *data
        cdef sqlite3_stmt *st
        if self._st == NULL:
            return out
        self._conn.total_changes
        while self._has_row and len(out) < max_rows:
            row = []
            for i in range(self._ncol):
                t = _column_type(self._st, i)
                if t == SQLITE_INTEGER:
                    row.append(_column_int64(self._st, i))
                elif t == SQLITE_FLOAT:
                    row.append(_column_double(self._st, i))
                elif t == SQLITE_TEXT:
                    data = _column_text(self._st, i)
                    nb = _column_bytes(self._st, i)
                    if _bad_utf8(<const unsigned char*>data, nb) >= 0:
                        self._has_row = 0
                        raise _bad_text(self, i)
                    row.append(data[:nb].decode("utf-8"))
                elif t == SQLITE_BLOB:
                    data = <const char*>_column_blob(self._st, i)
                    nb = _column_bytes(self._st, i)
                    row.append(data[:nb] if nb else b"")
                else:
                    row.append(None)
            out.append(tuple(row))
            self._busy = True
            st = self._st
            with nogil:
                rc = _step(st)
            self._end_busy()
            if rc == SQLITE_DONE:
                self._has_row = 0
                _reset(self._st)
            elif rc != SQLITE_ROW:
                self._fail()
        return out


cdef bytes _header(Py_ssize_t n):
    if n < 16:
        inner = bytes((0x90 | n,))
    elif n < 0x10000:
        inner = b"\xdc" + n.to_bytes(2, "big")
    else:
        inner = b"\xdd" + n.to_bytes(4, "big")
    return b"\x91" + inner


cdef object _bad_text(Statement s, int col):
    # The error Python's sqlite3 raises for text that is not UTF-8 (text_factory=str),
    # formatted as it formats it: printf into a 4 KiB buffer, then ASCII with
    # replacement characters.
    cdef const char *name = _column_name(s._st, col)
    cdef const char *data = _column_text(s._st, col)
    raw = (b"Could not decode to UTF-8 column '" + (name[:strlen(name)] if name != NULL else b"?")
           + b"' with text '" + (data[:strlen(data)] if data != NULL else b"") + b"'")
    msg = raw[:_bad_text_cut].decode("ascii", "replace")
    err = _OperationalError(msg)
    s._sql = None
    s.close()
    return err


_OperationalError = None
_make_error = None
cdef Py_ssize_t _bad_text_cut = 4094  # what sqlite3 keeps of that message (configure)


def _engine_error(code, ext, msg):
    return _make_error(code, ext, msg)


def configure(operational_error, make_error, str library):
    """Set the exception types (from Python's sqlite3) and load SQLite's functions."""
    global _OperationalError, _make_error, _bad_text_cut
    _OperationalError = operational_error
    _make_error = make_error
    _load(library)
    _bad_text_cut = _sqlite3_bad_text_cut()


def _sqlite3_bad_text_cut():
    """How much of the non-UTF-8 text error this Python's sqlite3 keeps (its buffer was
    4 KiB, and is 200 bytes in 3.11.7): asked of sqlite3 itself, once."""
    import sqlite3
    db = sqlite3.connect(":memory:")
    try:
        db.execute("SELECT CAST(? AS TEXT)", (b"x" * 8192 + b"\xff",)).fetchall()
    except sqlite3.OperationalError as e:
        return len(str(e)) if len(str(e)) < 8192 else 2**62  # (not cut)
    finally:
        db.close()
    return 4094


@cython.no_gc  # holds only texts and numbers: never in a cycle, never cleared before dealloc
cdef class Cache:
    """One connection's prepared statements, kept between uses as ``sqlite3`` keeps its
    own (a lookup would otherwise prepare its statement every time), and the SQL texts
    the compiled path does not take.  Statements in use are not in it."""

    cdef dict _free  # SQL text -> address of a free prepared statement, 0 if not ours
    cdef int _limit
    cdef bint _closed

    def __cinit__(self, int limit=128):
        self._free = {}
        self._limit = limit

    def __dealloc__(self):
        self._finalize_all()

    cdef void _finalize_all(self) noexcept:
        if not self._free:  # (None once the garbage collector cleared it)
            return
        for p in self._free.values():
            if p:
                _finalize(<sqlite3_stmt*><size_t>p)
        self._free = {}

    def close(self):
        """Finalize every free statement; statements in use are finalized when closed."""
        self._closed = True
        self._finalize_all()

    def __len__(self):
        return len(self._free)

    cdef void _put(self, str sql, size_t p) noexcept:
        # ``p`` 0: the compiled path does not take this SQL (kept so it is not prepared
        # twice, here and by sqlite3, every time).
        cdef size_t old
        if self._closed or sql in self._free:
            if p:
                _finalize(<sqlite3_stmt*>p)
            return
        if len(self._free) >= self._limit:  # drop the least recently returned
            old = self._free.pop(next(iter(self._free)))
            if old:
                _finalize(<sqlite3_stmt*>old)
        self._free[sql] = p


def open_statement(object conn, Cache cache, str sql, tuple params, dict converters):
    """A :class:`Statement` for ``sql`` on ``conn``'s handle, stepped to its first row; or
    None where the compiled path does not apply and ``conn.execute`` must run it: not one
    read-only statement returning rows, a parameter or column that needs Python's
    adapters or converters, or any error while preparing (the pure path reports it)."""
    cdef sqlite3 *db = _raw_handle(conn)
    cdef sqlite3_stmt *st = NULL
    cdef Statement s
    cdef int i
    cdef bint ineligible = False
    if cache._closed:
        return None
    p = cache._free.pop(sql, None)
    if p is not None:
        if not p:
            cache._free[sql] = 0
            return None
        st = <sqlite3_stmt*><size_t>p
    else:
        st = _prepared(db, sql, &ineligible)
        if st == NULL:
            if ineligible:  # not a prepare error (those may pass: a table created later)
                cache._put(sql, 0)
            return None
    if _bind_parameter_count(st) != len(params):
        cache._put(sql, <size_t>st)  # sqlite3 reports the mismatch
        return None
    for i in range(len(params)):
        if _bind(st, i + 1, params[i]) != 0:
            _clear_bindings(st)
            cache._put(sql, <size_t>st)
            return None
    s = Statement.__new__(Statement)
    s._db = db
    s._st = st
    s._conn = conn
    s._cache = cache
    s._sql = sql
    s.lastrowid = _last_insert_rowid(db)  # what sqlite3's cursor says after a SELECT
    s._first_step()
    # The columns after the first step: a cached statement SQLite had to prepare again
    # there (the schema changed) may have others now.
    s._ncol = _column_count(st)
    # After the first step: a statement SQLite prepared again (the schema changed) may
    # now have a column whose declared type picks a converter.
    if _needs_converter(st, s._ncol, converters):
        s._has_row = 0
        s._sql = None
        s.close()
        return None
    s.description = tuple(
        (_column_name(st, i).decode("utf-8", "replace"), None, None, None, None, None, None)
        for i in range(s._ncol))
    return s


cdef sqlite3_stmt *_prepared(sqlite3 *db, str sql, bint *ineligible):
    """``sql`` prepared, if the compiled path takes it: one read-only statement that
    returns rows (not EXPLAIN); NULL otherwise or on any error."""
    cdef sqlite3_stmt *st = NULL
    cdef const char *tail = NULL
    cdef bytes b
    if "\x00" in sql:  # sqlite3 refuses it; SQLite would stop reading there
        ineligible[0] = True
        return NULL
    try:
        b = sql.encode("utf-8")
    except UnicodeEncodeError:
        return NULL
    if _prepare(db, b, len(b) + 1, &st, &tail) != SQLITE_OK or st == NULL:
        if st != NULL:
            _finalize(st)
        return NULL
    while tail[0] in (b' ', b'\t', b'\n', b'\r', b'\f'):  # nothing after it (sqlite3
        tail += 1  # decides about comments and empty statements there, and refuses them)
    if (tail[0] != 0 or _column_count(st) == 0 or not _readonly(st) or _isexplain(st)):
        _finalize(st)
        ineligible[0] = True
        return NULL
    return st


cdef bint _needs_converter(sqlite3_stmt *st, int ncol, dict converters):
    cdef const char *name
    cdef const char *decl
    cdef int i
    for i in range(ncol):
        name = _column_name(st, i)
        if name != NULL and b"[" in name[:strlen(name)]:
            return True  # PARSE_COLNAMES: "x [type]" picks a converter
        decl = _column_decltype(st, i)
        if decl != NULL and converters and _decl_key(decl) in converters:
            return True  # PARSE_DECLTYPES: the declared type has a converter
    return False


cdef str _decl_key(const char *decl):
    # sqlite3's converter key: the declared type up to its first space or "(", upper-cased.
    cdef bytes d = decl[:strlen(decl)]
    cdef Py_ssize_t i
    for i in range(len(d)):
        if d[i] == 0x20 or d[i] == 0x28:
            d = d[:i]
            break
    return d.decode("utf-8", "replace").upper()


cdef int _bind(sqlite3_stmt *st, int i, object v) except -2:
    # Only the types sqlite3 binds without an adapter; any other: -1 (the pure path).
    cdef bytes b
    cdef const char *p
    cdef Py_ssize_t n
    t = type(v)
    if v is None:
        return _bind_null(st, i)
    if t is int:
        if not -9223372036854775808 <= v <= 9223372036854775807:
            return -1  # (big_ints() refuses it before; sqlite3 would say why)
        return _bind_int64(st, i, <int64_t>v)
    if t is float:
        return _bind_double(st, i, <double>v)
    if t is str:
        try:
            b = (<str>v).encode("utf-8")
        except UnicodeEncodeError:
            return -1
        if len(b) > INT_MAX:  # the length is a C int: sqlite3 (the pure path) says why
            return -1
        return _bind_text(st, i, <const char*>b, len(b), TRANSIENT)
    if t is bytes:
        p = <bytes>v
        n = len(<bytes>v)
        if n > INT_MAX:
            return -1
        return _bind_blob(st, i, p, n, TRANSIENT)
    return -1
