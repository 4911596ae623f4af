# cython: language_level=3
"""fastping's pipeline: target files in, result lines out, at the core's speed.

TargetSet parses target text (files streamed in 1 MiB reads, standard input,
argument lists) straight into packed address arrays the core loads with
IcmpSocket.append_packed: one IPv4 address costs 4 bytes here, never a Python
object. Plain addresses (the lines of a million-line file) are parsed in C; a
line that is anything else (CIDR block, range, host name, IPv6 with a scope, a
mistake) goes through fastping.targets.parse_target, the reference parser, so
every kind of line means what it always meant and every mistake gets the same
message, with its line number.

Formatter writes per-target lines (text, JSON lines, a zmap-like CSV, or bare
targets for -a/-u) from the rows IcmpSocket.export_rows copies out of the core
(includes/slotrow.pxd), byte for byte what fastping.formats (the Python
reference) writes for the same HostResult. Columns turns the same rows into
arrays (SweepResult.columns()).

Floats are written the way Python writes round(x, n) (json.dumps / csv use
repr): an RTT that is a whole number of nanoseconds / 1e6 is formatted with
integer arithmetic where that is provably the same string (not at a rounding
tie); every other value goes through CPython's own dtoa (PyOS_double_to_string),
so the two can never disagree.
"""

from cpython.array cimport array, resize_smart
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_RawFree, PyMem_RawRealloc
from libc.math cimport sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy, memmove, strlen

from includes.slotrow cimport SlotRow
from includes.socket cimport AF_INET, AF_INET6, inet_ntop, inet_pton

import array as _array_mod


cdef extern from "Python.h":
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int *type) except NULL
    double PyOS_string_to_double(const char *s, char **endptr, object overflow_exception) except? -1.0
    int Py_DTSF_ADD_DOT_0


# the most bytes one line of a targets file may have: a longer one means the file is
# not a list of targets (/dev/zero, a binary, a log); reading stops there
MAX_LINE = 4096
# bad lines whose messages are kept (all are counted)
MAX_ERRORS_KEPT = 100
# a file with at least this many non-empty lines, more than half of them bad, is refused
# as soon as that is seen (not read to its end)
GARBAGE_MIN_LINES = 20

DEF READ_CHUNK = 1 << 20

# kinds of run in a TargetSet (host order = run order)
RUN_V4 = 0
RUN_V6 = 1
RUN_NAME = 2

# Formatter formats
FMT_NONE = 0      # count only (-q, the summary)
FMT_TEXT = 1
FMT_JSON = 2
FMT_CSV = 3
FMT_TARGET = 4    # the bare target, one a line (-a / -u)
# Formatter selections
SEL_ALL = 0
SEL_ALIVE = 1
SEL_DOWN = 2

ROW_SIZE = sizeof(SlotRow)

CSV_HEADER = ("target,address,sent,received,loss,min_ms,avg_ms,max_ms,stddev_ms,jitter_ms,"
              "duplicates,late,timeouts,unreachable,time_exceeded,send_errors,ttl,error")


# ---------------------------------------------------------------- growable buffer
cdef struct Buf:
    uint8_t *p
    size_t n, cap


cdef int buf_reserve(Buf *b, size_t extra) except -1:
    cdef size_t cap
    cdef void *q
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.n + extra:
        cap *= 2
    q = PyMem_RawRealloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = <uint8_t *>q
    b.cap = cap
    return 0


cdef inline int buf_put(Buf *b, const void *src, size_t n) except -1:
    if b.n + n > b.cap:
        buf_reserve(b, n)
    memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline void buf_free(Buf *b) noexcept:
    PyMem_RawFree(b.p)
    b.p = NULL
    b.n = b.cap = 0


# ---------------------------------------------------------------- targets
cdef inline bint _is_space(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


cdef class TargetSet:
    """Targets parsed into packed arrays, in the order given.

    ``runs()``: (kind, count) pairs in host order (RUN_V4 / RUN_V6: that many of the
    family's addresses, in order; RUN_NAME: that many of ``names``). ``labels``:
    host index -> what the user typed, for the few hosts where it is not the
    address as the core writes it (a non-canonical IPv6 spelling, a scope).
    ``errors``: (source, line number, message) of the first MAX_ERRORS_KEPT bad
    lines; ``n_errors`` counts them all. ``fatal``: why reading stopped early."""

    cdef Buf v4, v6, runs_buf
    cdef readonly list names
    cdef readonly dict labels
    cdef readonly list errors
    cdef readonly Py_ssize_t n_errors, n_lines, n_hosts, n_v4, n_v6
    cdef readonly object fatal
    cdef readonly object first_v4, first_v6
    cdef int64_t last_kind
    cdef object _parse_target, _target_error, _v4range, _address, _name

    def __cinit__(self):
        self.names = []
        self.labels = {}
        self.errors = []
        self.last_kind = -1
        from .errors import TargetError
        from .targets import Address, Name, V4Range, parse_target
        self._parse_target = parse_target
        self._target_error = TargetError
        self._v4range = V4Range
        self._address = Address
        self._name = Name

    def __dealloc__(self):
        buf_free(&self.v4)
        buf_free(&self.v6)
        buf_free(&self.runs_buf)

    # -------------------------------------------------- building
    cdef int _run(self, int64_t kind, int64_t count) except -1:
        cdef int64_t *last
        if count <= 0:
            return 0
        if kind == self.last_kind and self.runs_buf.n:
            last = <int64_t *>(self.runs_buf.p + self.runs_buf.n - 16)
            last[1] += count
        else:
            buf_put(&self.runs_buf, &kind, 8)
            buf_put(&self.runs_buf, &count, 8)
            self.last_kind = kind
        self.n_hosts += count
        return 0

    cdef int _add4(self, const uint8_t *a, const char *typed, Py_ssize_t tn) except -1:
        if self.n_v4 == 0:
            self.first_v4 = typed[:tn].decode("utf-8", "replace")
        buf_put(&self.v4, a, 4)
        self.n_v4 += 1
        return self._run(RUN_V4, 1)

    cdef int _add6(self, const uint8_t *a, const char *typed, Py_ssize_t tn) except -1:
        # the label is kept only when the text differs from the address the core prints
        cdef char canon[64]
        if self.n_v6 == 0:
            self.first_v6 = typed[:tn].decode("utf-8", "replace")
        inet_ntop(AF_INET6, a, canon, sizeof(canon))
        if <Py_ssize_t>strlen(canon) != tn or memcmp(canon, typed, tn) != 0:
            self.labels[self.n_hosts] = typed[:tn].decode("utf-8", "replace")
        buf_put(&self.v6, a, 16)
        self.n_v6 += 1
        return self._run(RUN_V6, 1)

    cdef int _error(self, object source, Py_ssize_t lineno, str message) except -1:
        self.n_errors += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append((source, lineno, message))
        return 0

    cdef int _word(self, const char *w, Py_ssize_t n, object source, Py_ssize_t lineno) except -1:
        cdef uint8_t a[16]
        cdef char tmp[64]
        cdef Py_ssize_t i
        cdef bint v4chars = n <= 15, v6chars = n <= 45, colon = False
        cdef uint8_t c
        for i in range(n):
            c = <uint8_t>w[i]
            if c == 58:             # ':'
                colon = True
                v4chars = False
            elif 48 <= c <= 57:     # digit
                pass
            elif c == 46:           # '.'
                pass
            elif (97 <= c <= 102) or (65 <= c <= 70):  # hex letter
                v4chars = False
            else:
                v4chars = False
                v6chars = False
        if v4chars or (v6chars and colon):
            memcpy(tmp, w, n)
            tmp[n] = 0
            if v4chars and inet_pton(AF_INET, tmp, a) == 1:
                return self._add4(a, w, n)
            # fe80::/10 (link-local) goes to the reference parser, which refuses it
            # without a scope: it names no interface to send on
            if (colon and inet_pton(AF_INET6, tmp, a) == 1 and
                    not (a[0] == 0xFE and (a[1] & 0xC0) == 0x80)):
                return self._add6(a, w, n)
        return self._slow(w, n, source, lineno)

    cdef int _slow(self, const char *w, Py_ssize_t n, object source, Py_ssize_t lineno) except -1:
        # everything that is not a plain address: the reference parser decides
        cdef uint8_t a[16]
        cdef uint32_t first, cnt, k, v
        cdef bytes raw = w[:n]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(source, lineno, f"target {raw!r} is not UTF-8 text")
        if b"\0" in raw:
            return self._error(source, lineno, "the line has a NUL byte: is this a binary file?")
        try:
            specs = self._parse_target(text)
        except self._target_error as e:
            return self._error(source, lineno, str(e))
        for s in specs:
            if isinstance(s, self._v4range):
                first = s.first
                cnt = s.count
                if self.n_v4 == 0:
                    self.first_v4 = text
                buf_reserve(&self.v4, <size_t>cnt * 4)
                for k in range(cnt):
                    v = first + k
                    a[0] = v >> 24
                    a[1] = (v >> 16) & 0xFF
                    a[2] = (v >> 8) & 0xFF
                    a[3] = v & 0xFF
                    memcpy(self.v4.p + self.v4.n, a, 4)
                    self.v4.n += 4
                self.n_v4 += cnt
                self._run(RUN_V4, cnt)
            elif isinstance(s, self._address):
                b = (<str>s.address).encode("ascii")
                if s.family == AF_INET:
                    inet_pton(AF_INET, b, a)
                    self._add4(a, b, len(b))
                    if s.label != s.address:
                        self.labels[self.n_hosts - 1] = s.label
                else:
                    inet_pton(AF_INET6, b, a)
                    self._add6(a, b, len(b))
                    ntop = _ntop6(a)
                    if s.label != ntop:
                        self.labels[self.n_hosts - 1] = s.label
                    elif (self.n_hosts - 1) in self.labels:
                        del self.labels[self.n_hosts - 1]
            else:
                self.names.append(s.name)
                self._run(RUN_NAME, 1)
        return 0

    cdef int _line(self, const char *p, Py_ssize_t n, object source, Py_ssize_t lineno) except -1:
        cdef const char *hash_ = <const char *>memchr(p, 35, n)   # '#': a comment
        cdef Py_ssize_t i = 0, j
        if hash_ != NULL:
            n = hash_ - p
        while True:
            while i < n and _is_space(<uint8_t>p[i]):
                i += 1
            if i >= n:
                break
            j = i
            while j < n and not _is_space(<uint8_t>p[j]):
                j += 1
            self._word(p + i, j - i, source, lineno)
            i = j
        return 0

    def add_arguments(self, texts):
        """Targets given one per argument (the command line, a library list)."""
        cdef bytes b
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"a target must be a str, not {type(t).__name__}")
            b = (<str>t).encode("utf-8", "surrogateescape")
            s = (<str>t).strip()
            if not s:
                self._error(None, 0, "empty target: give an address, a host name, a CIDR block "
                            "or a range")
                continue
            if s.startswith("-") or " " in s or "\t" in s:
                self._slow(b, len(b), None, 0)
            else:
                b = s.encode("utf-8", "surrogateescape")
                self._word(b, len(b), None, 0)
            self.n_lines += 1

    def add_file(self, f, source):
        """Read targets from the binary file object ``f`` (one or more a line, ``#``
        comments, blank lines) in 1 MiB reads: memory stays bounded whatever the file
        holds. Stops early (``fatal`` set) at a line over MAX_LINE bytes or when
        most lines are not targets."""
        cdef bytearray chunk = bytearray(READ_CHUNK + MAX_LINE + 1)
        cdef char *base = chunk
        cdef Py_ssize_t have = 0, got, start, end
        cdef Py_ssize_t text_lines = 0, lineno = self.n_lines
        cdef const char *nl
        cdef bint eof = False
        mv = memoryview(chunk)
        cdef Py_ssize_t errors0 = self.n_errors
        while not eof:
            got = f.readinto(mv[have:have + READ_CHUNK]) or 0
            if got == 0:
                eof = True
                if have == 0:
                    break
                base[have] = 10       # the last line has no newline
                have += 1
            else:
                have += got
            start = 0
            while start < have:
                nl = <const char *>memchr(base + start, 10, have - start)
                if nl == NULL:
                    break
                end = nl - base
                lineno += 1
                if end - start > MAX_LINE:
                    self._too_long(source, lineno)
                    return
                if self._has_text(base + start, end - start):
                    text_lines += 1
                    self._line(base + start, end - start, source, lineno)
                start = end + 1
            if start < have:
                if have - start > MAX_LINE:
                    self._too_long(source, lineno + 1)
                    return
                memmove(base, base + start, have - start)
            have -= start
            if self._garbage_in(text_lines, errors0):
                self._mostly_garbage(source, text_lines, errors0)
                return
        self.n_lines = lineno
        if text_lines and self._garbage_in(text_lines, errors0):
            self._mostly_garbage(source, text_lines, errors0)

    cdef bint _has_text(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t i
        for i in range(n):
            if p[i] == 35:
                return False
            if not _is_space(<uint8_t>p[i]):
                return True
        return False

    cdef bint _garbage_in(self, Py_ssize_t text_lines, Py_ssize_t errors0):
        return text_lines >= GARBAGE_MIN_LINES and (self.n_errors - errors0) * 2 > text_lines

    cdef _too_long(self, object source, Py_ssize_t lineno):
        self.fatal = (f"{source}:{lineno}: line longer than {MAX_LINE} bytes: this is not a "
                      "targets file (one address, name, CIDR block or range a line)")

    cdef _mostly_garbage(self, object source, Py_ssize_t text_lines, Py_ssize_t errors0):
        self.fatal = (f"{source}: {self.n_errors - errors0} of the first {text_lines} lines "
                      "are not targets: is this the right file? (one address, host name, CIDR "
                      "block or range a line; # starts a comment)")

    # -------------------------------------------------- reading back
    def runs(self):
        """(kind, count) pairs in host order."""
        cdef Py_ssize_t i, nr = self.runs_buf.n // 16
        cdef int64_t *r = <int64_t *>self.runs_buf.p
        return [(r[2 * i], r[2 * i + 1]) for i in range(nr)]

    def packed(self, int family):
        """The family's addresses, packed (network order, 4 or 16 bytes each)."""
        cdef Buf *b = &self.v4 if family == AF_INET else &self.v6
        if b.n == 0:
            return b""
        return PyBytes_FromStringAndSize(<char *>b.p, b.n)

    def take_packed(self, int family):
        """Move the family's packed addresses out, without a copy: a read-only buffer
        (PackedAddresses) that frees them when the last view of it goes. The set keeps
        its counts and runs; packed() of that family is empty afterwards."""
        cdef Buf *b = &self.v4 if family == AF_INET else &self.v6
        cdef PackedAddresses out = PackedAddresses.__new__(PackedAddresses)
        out.p = b.p
        out.n = <Py_ssize_t>b.n
        b.p = NULL
        b.n = b.cap = 0
        return out

    def release_packed(self):
        """Free the packed addresses (the sockets have their own copy now)."""
        buf_free(&self.v4)
        buf_free(&self.v6)

    def address_strings(self):
        """Every target as text, in host order (for the system-ping fallback)."""
        out = []
        cdef Py_ssize_t i4 = 0, i6 = 0, ni = 0, _k, h = 0
        for kind, cnt in self.runs():
            for _k in range(cnt):
                lab = self.labels.get(h)
                if kind == RUN_V4:
                    out.append(lab or _ntop4(self.v4.p + 4 * i4))
                    i4 += 1
                elif kind == RUN_V6:
                    out.append(lab or _ntop6(self.v6.p + 16 * i6))
                    i6 += 1
                else:
                    out.append(self.names[ni])
                    ni += 1
                h += 1
        return out


cdef class PackedAddresses:
    """Addresses moved out of a TargetSet by take_packed: a read-only buffer of
    network-order addresses, freed with the last view of it."""

    cdef uint8_t *p
    cdef Py_ssize_t n

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, <void *>(self.p if self.p != NULL else <uint8_t *>b""),
                          self.n, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __len__(self):
        return self.n

    def __dealloc__(self):
        PyMem_RawFree(self.p)


cdef str _ntop4(const uint8_t *a):
    cdef char buf[64]
    inet_ntop(AF_INET, a, buf, sizeof(buf))
    return buf.decode("ascii")


cdef str _ntop6(const uint8_t *a):
    cdef char buf[64]
    inet_ntop(AF_INET6, a, buf, sizeof(buf))
    return buf.decode("ascii")


# ---------------------------------------------------------------- number formatting
cdef inline int put_s(Buf *b, const char *s) except -1:
    return buf_put(b, s, strlen(s))


cdef inline int _key_or_sep(Buf *b, bint keys, const char *key, const char *sep) except -1:
    # a JSON field's key, or the CSV separator before the next column
    return put_s(b, key if keys else sep)


cdef int put_u64(Buf *b, unsigned long long v) except -1:
    cdef char tmp[24]
    cdef int i = 23
    tmp[23] = 0
    if v == 0:
        return buf_put(b, "0", 1)
    while v:
        i -= 1
        tmp[i] = 48 + <char>(v % 10)
        v //= 10
    return buf_put(b, tmp + i, 23 - i)


cdef int put_fixed(Buf *b, unsigned long long q, int nd, bint strip) except -1:
    """q / 10**nd in fixed notation; strip: trailing zeros removed, one kept after
    the dot (repr of a short decimal)."""
    cdef char tmp[40]
    cdef int i = 40, end = 40, _k
    for _k in range(nd):
        i -= 1
        tmp[i] = 48 + <char>(q % 10)
        q //= 10
    if strip:
        while end - i > 1 and tmp[end - 1] == 48:
            end -= 1
    i -= 1
    tmp[i] = 46                 # '.'
    if q == 0:
        i -= 1
        tmp[i] = 48
    while q:
        i -= 1
        tmp[i] = 48 + <char>(q % 10)
        q //= 10
    return buf_put(b, tmp + i, end - i)


cdef int ntop_into(int family, const uint8_t *a, char *out) noexcept nogil:
    """inet_ntop's text of an address into ``out`` (64 bytes), NUL-terminated; its
    length. IPv4 is written here (it is most rows and inet_ntop is slower)."""
    cdef int i, n = 0
    cdef uint8_t v
    if family == AF_INET6:
        inet_ntop(AF_INET6, a, out, 64)
        return <int>strlen(out)
    for i in range(4):
        v = a[i]
        if v >= 100:
            out[n] = 48 + v // 100
            n += 1
        if v >= 10:
            out[n] = 48 + (v // 10) % 10
            n += 1
        out[n] = 48 + v % 10
        n += 1
        out[n] = 46
        n += 1
    out[n - 1] = 0
    return n - 1


cdef int put_repr_round(Buf *b, double v, int nd) except -1:
    """repr(round(v, nd)), through CPython's own dtoa."""
    cdef char *s = PyOS_double_to_string(v, b'f', nd, 0, NULL)
    cdef double r
    try:
        r = PyOS_string_to_double(s, NULL, None)
    finally:
        PyMem_Free(s)
    s = PyOS_double_to_string(r, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        buf_put(b, s, strlen(s))
    finally:
        PyMem_Free(s)
    return 0


cdef int put_ms_round4(Buf *b, int64_t ns) except -1:
    """repr(round(ns / 1e6, 4)) for a whole number of nanoseconds."""
    if 0 <= ns < 1000000000000000 and ns % 100 != 50:
        # |fl(ns/1e6) - ns/1e6| < 1e-9 here, while a 4-decimal tie is >= 1e-6 away:
        # the correctly rounded digits are those of (ns + 50) // 100; repr of the double
        # nearest q/1e4 is that decimal itself (<= 15 significant digits round-trip)
        return put_fixed(b, <unsigned long long>((ns + 50) // 100), 4, True)
    return put_repr_round(b, ns / 1e6, 4)


cdef int put_ms_fixed3(Buf *b, double v, int64_t ns, bint exact) except -1:
    """format(v, '.3f'); ``exact``: v is fl(ns / 1e6)."""
    if exact and 0 <= ns < 1000000000000000 and ns % 1000 != 500:
        return put_fixed(b, <unsigned long long>((ns + 500) // 1000), 3, False)
    s = PyOS_double_to_string(v, b'f', 3, 0, NULL)
    try:
        buf_put(b, s, strlen(s))
    finally:
        PyMem_Free(s)
    return 0


# ---------------------------------------------------------------- one row, derived
cdef struct Derived:
    unsigned long long sent, received
    double loss
    bint alive
    double min_ms, avg_ms, max_ms, stddev_ms, jitter_ms
    bint has_jitter
    int64_t avg_ns          # avg_ms == fl(avg_ns / 1e6) when avg_exact
    bint avg_exact
    int ttl                 # 0: None
    int err                 # 0: none, 1: unreachable / time exceeded, 2: send failed


cdef const char *port_state(const SlotRow *r) noexcept nogil:
    """What a port said: open (a SYN-ACK or reply), closed (only RSTs, or for UDP
    the host's ICMP port unreachable), unreachable (an ICMP error, no answer) or
    filtered (silence; for UDP open|filtered: a UDP service need not answer)."""
    if r.received > r.closed:
        return b"open"
    if r.received:
        return b"closed"
    if r.unreach or r.texc:
        return b"unreachable"
    return b"open|filtered" if r.proto == 17 else b"filtered"


cdef int _with_port(char *addr, int al, uint16_t port, int family) noexcept nogil:
    """Append ``:port`` to the address text in ``addr`` (IPv6 in brackets); return
    the new length (``addr`` holds 64 bytes: the longest result is 47)."""
    cdef char tmp[64]
    if family == AF_INET6:
        memcpy(tmp, addr, al)
        addr[0] = 91          # [
        memcpy(addr + 1, tmp, al)
        addr[al + 1] = 93     # ]
        al += 2
    return al + snprintf(addr + al, 64 - al, b":%u", <unsigned int>port)


cdef void derive(const SlotRow *r, Derived *d) noexcept nogil:
    # the arithmetic of api._host_from_stats, in the same order (IEEE division of
    # exact operands rounds as Python's int / int does)
    cdef double avg, var
    cdef uint32_t jn
    d.sent = <unsigned long long>r.sent + r.senderr
    d.received = r.received
    # a port answered "closed" (TCP RST): the host is up, the service is not
    d.alive = r.received > r.closed if r.port else r.received > 0
    d.loss = 1.0 if d.sent == 0 else <double>(d.sent - d.received) / <double>d.sent
    d.has_jitter = False
    d.avg_exact = False
    d.ttl = 0
    if r.received:
        avg = <double>r.sum_ns / <double>r.received
        d.min_ms = <double>r.min_ns / 1e6
        d.max_ms = <double>r.max_ns / 1e6
        d.avg_ms = avg / 1e6
        if r.sum_ns % r.received == 0:
            d.avg_exact = True
            d.avg_ns = r.sum_ns // r.received
        var = r.sumsq / <double>r.received - avg * avg
        if 0.0 > var:
            var = 0.0
        d.stddev_ms = sqrt(var) / 1e6
        jn = r.received - 1 if r.received > 1 else 0
        if jn:
            d.has_jitter = True
            d.jitter_ms = <double>r.jit_sum_ns / <double>jn / 1e6
        d.ttl = r.ttl
    if r.unreach or r.texc:
        d.err = 1
    elif r.senderr and not r.received:
        d.err = 2
    else:
        d.err = 0


cdef int put_error(Buf *b, const SlotRow *r, int family) except -1:
    cdef char tmp[160]
    cdef char rtr[64]
    cdef int n
    if r.has_router:
        inet_ntop(family, r.router, rtr, sizeof(rtr))
    else:
        memcpy(rtr, b"None", 5)
    n = snprintf(tmp, sizeof(tmp), "%s (type %d code %d) from %s",
                 <const char *>(b"time exceeded" if r.texc else b"unreachable"),
                 <int>r.err_type, <int>r.err_code, rtr)
    return buf_put(b, tmp, n)


cdef int put_json_str(Buf *b, const char *s, Py_ssize_t n) except -1:
    # json.dumps' ASCII escaping for the strings this module writes itself (addresses,
    # errors, ASCII labels); a label with other characters comes pre-escaped
    cdef Py_ssize_t i
    cdef uint8_t c
    cdef char tmp[8]
    buf_put(b, b'"', 1)
    for i in range(n):
        c = <uint8_t>s[i]
        if c == 34 or c == 92 or c < 32:
            break
    else:
        buf_put(b, s, n)        # the usual case: nothing to escape
        return buf_put(b, b'"', 1)
    for i in range(n):
        c = <uint8_t>s[i]
        if c == 34 or c == 92:
            buf_put(b, b"\\", 1)
            buf_put(b, &s[i], 1)
        elif c < 32:
            if c == 10:
                buf_put(b, b"\\n", 2)
            elif c == 13:
                buf_put(b, b"\\r", 2)
            elif c == 9:
                buf_put(b, b"\\t", 2)
            elif c == 8:
                buf_put(b, b"\\b", 2)
            elif c == 12:
                buf_put(b, b"\\f", 2)
            else:
                snprintf(tmp, sizeof(tmp), "\\u%04x", <int>c)
                buf_put(b, tmp, 6)
        else:
            buf_put(b, &s[i], 1)
    return buf_put(b, b'"', 1)


cdef int put_csv_str(Buf *b, const char *s, Py_ssize_t n) except -1:
    # csv.writer's QUOTE_MINIMAL: quoted when it holds a comma, a quote or a line end
    cdef Py_ssize_t i
    cdef bint q = False
    for i in range(n):
        if s[i] == 44 or s[i] == 34 or s[i] == 10 or s[i] == 13:
            q = True
            break
    if not q:
        return buf_put(b, s, n)
    buf_put(b, b'"', 1)
    for i in range(n):
        if s[i] == 34:
            buf_put(b, b'"', 1)
        buf_put(b, &s[i], 1)
    return buf_put(b, b'"', 1)


cdef class Formatter:
    """Per-target output from core rows. ``fmt``: FMT_*; ``select``: SEL_*; ``count``:
    probes per target (the text layout depends on it). Output accumulates in memory
    and goes to ``stream.write`` (bytes) each MiB and at ``flush``; ``alive`` and
    ``rows`` count what was seen (selected or not)."""

    cdef Buf out
    cdef readonly int fmt, select, count
    cdef readonly Py_ssize_t alive, rows
    cdef object stream

    def __cinit__(self, int fmt, int select, int count, stream=None):
        if not FMT_NONE <= fmt <= FMT_TARGET:
            raise ValueError(f"fmt {fmt} is not one of FMT_*")
        if not SEL_ALL <= select <= SEL_DOWN:
            raise ValueError(f"select {select} is not one of SEL_*")
        self.fmt = fmt
        self.select = select
        self.count = count
        self.stream = stream

    def __dealloc__(self):
        buf_free(&self.out)

    def write_rows(self, const uint8_t[::1] rows, Py_ssize_t n, int family, label=None):
        """Format ``n`` rows from ``rows`` (IcmpSocket.export_rows). ``label``: the
        target as typed, for a single row whose target is not its address (str; the
        JSON / CSV form is made here)."""
        cdef Py_ssize_t i
        cdef const SlotRow *r
        cdef bytes lab = None, lab_json = None
        if n < 0 or <size_t>rows.shape[0] < <size_t>n * sizeof(SlotRow):
            raise ValueError("rows holds fewer than n rows")
        if family != AF_INET and family != AF_INET6:
            raise ValueError(f"family {family} is not AF_INET or AF_INET6")
        if label is not None:
            if n != 1:
                raise ValueError("a label names one row")
            lab = (<str>label).encode("utf-8", "surrogateescape")
            r = <const SlotRow *>&rows[0]
            if self.fmt == FMT_JSON and (r.port or not (<str>label).isascii()):
                import json
                # a host:port pair's target carries its port, as an address's does
                # ("localhost:22", beside "127.0.0.1:22"); "port" has it apart too
                lab_json = json.dumps(f"{label}:{r.port}" if r.port else label).encode("ascii")
        for i in range(n):
            r = <const SlotRow *>&rows[i * sizeof(SlotRow)]
            self._row(r, family, lab, lab_json)
        if self.out.n >= READ_CHUNK:
            self.flush()
        return None

    cdef int _row(self, const SlotRow *r, int family, bytes lab, bytes lab_json) except -1:
        cdef Derived d
        cdef char addr[64]
        cdef Buf *b = &self.out
        cdef const char *name
        cdef Py_ssize_t nl
        derive(r, &d)
        self.rows += 1
        if d.alive:
            self.alive += 1
        if self.fmt == FMT_NONE:
            return 0
        if (self.select == SEL_ALIVE and not d.alive) or (self.select == SEL_DOWN and d.alive):
            return 0
        cdef int al = ntop_into(family, r.addr, addr)
        if r.port:
            al = _with_port(addr, al, r.port, family)
        if lab is not None:
            name = lab
            nl = len(lab)
        else:
            name = addr
            nl = al
        if self.fmt == FMT_TARGET:
            buf_put(b, name, nl)
            return buf_put(b, b"\n", 1)
        if self.fmt == FMT_TEXT:
            return self._text(r, &d, name, nl, addr, lab is not None, family)
        if self.fmt == FMT_JSON:
            return self._json(r, &d, name, nl, addr, lab_json, family)
        return self._csv(r, &d, name, nl, addr, family)

    cdef int _text(self, const SlotRow *r, Derived *d, const char *name, Py_ssize_t nl,
                   const char *addr, bint labelled, int family) except -1:
        cdef Buf *b = &self.out
        cdef bint first = True
        buf_put(b, name, nl)
        if labelled:
            buf_put(b, b" (", 2)
            put_s(b, addr)
            buf_put(b, b")", 1)
        if r.port:
            # "127.0.0.1:22 is open (0.051 ms)"; with -c > 1 the statistics follow
            buf_put(b, b" is ", 4)
            put_s(b, port_state(r))
            if self.count == 1:
                return self._one(r, d, r.received > 0, family)
        if self.count == 1:
            buf_put(b, b" is alive" if d.alive else b" is unreachable", 9 if d.alive else 15)
            return self._one(r, d, d.alive, family)
        buf_put(b, b" : xmt/rcv/%loss = ", 19)
        put_u64(b, d.sent)
        buf_put(b, b"/", 1)
        put_u64(b, d.received)
        buf_put(b, b"/", 1)
        s = PyOS_double_to_string(d.loss * 100, b'f', 0, 0, NULL)
        try:
            put_s(b, s)
        finally:
            PyMem_Free(s)
        buf_put(b, b"%", 1)
        if d.received:
            buf_put(b, b", min/avg/max = ", 16)
            put_ms_fixed3(b, d.min_ms, r.min_ns, True)
            buf_put(b, b"/", 1)
            put_ms_fixed3(b, d.avg_ms, d.avg_ns, d.avg_exact)
            buf_put(b, b"/", 1)
            put_ms_fixed3(b, d.max_ms, r.max_ns, True)
        if r.dup or r.late or d.err:
            buf_put(b, b" [", 2)
            if r.dup:
                put_u64(b, r.dup)
                buf_put(b, b" dup", 4)
                first = False
            if r.late:
                if not first:
                    buf_put(b, b", ", 2)
                put_u64(b, r.late)
                buf_put(b, b" late", 5)
                first = False
            if d.err:
                if not first:
                    buf_put(b, b", ", 2)
                self._err_text(r, d, family)
            buf_put(b, b"]", 1)
        return buf_put(b, b"\n", 1)

    cdef int _one(self, const SlotRow *r, Derived *d, bint timed, int family) except -1:
        # the end of a one-probe line: " (0.041 ms)", or the error, or nothing
        cdef Buf *b = &self.out
        if timed:
            buf_put(b, b" (", 2)
            put_ms_fixed3(b, d.avg_ms, d.avg_ns, d.avg_exact)
            return buf_put(b, b" ms)\n", 5)
        if d.err:
            buf_put(b, b" (", 2)
            self._err_text(r, d, family)
            buf_put(b, b")", 1)
        return buf_put(b, b"\n", 1)

    cdef int _err_text(self, const SlotRow *r, Derived *d, int family) except -1:
        if d.err == 1:
            return put_error(&self.out, r, family)
        return put_s(&self.out, b"send failed (see send_errors)")

    cdef int _floats(self, const SlotRow *r, Derived *d, const char *sep, const char *none,
                     bint keys) except -1:
        # loss, min, avg, max, stddev, jitter as round()ed reprs, JSON or CSV style
        cdef Buf *b = &self.out
        _key_or_sep(b, keys, b', "loss": ', sep)
        if d.loss == 0.0:
            buf_put(b, b"0.0", 3)
        elif d.loss == 1.0:
            buf_put(b, b"1.0", 3)
        else:
            put_repr_round(b, d.loss, 6)
        _key_or_sep(b, keys, b', "min_ms": ', sep)
        if d.received:
            put_ms_round4(b, r.min_ns)
        else:
            put_s(b, none)
        _key_or_sep(b, keys, b', "avg_ms": ', sep)
        if not d.received:
            put_s(b, none)
        elif d.avg_exact:
            put_ms_round4(b, d.avg_ns)
        else:
            put_repr_round(b, d.avg_ms, 4)
        _key_or_sep(b, keys, b', "max_ms": ', sep)
        if d.received:
            put_ms_round4(b, r.max_ns)
        else:
            put_s(b, none)
        _key_or_sep(b, keys, b', "stddev_ms": ', sep)
        if not d.received:
            put_s(b, none)
        elif d.stddev_ms == 0.0:
            buf_put(b, b"0.0", 3)
        else:
            put_repr_round(b, d.stddev_ms, 4)
        _key_or_sep(b, keys, b', "jitter_ms": ', sep)
        if d.received and d.has_jitter:
            put_repr_round(b, d.jitter_ms, 4)
        else:
            put_s(b, none)
        return 0

    cdef int _json(self, const SlotRow *r, Derived *d, const char *name, Py_ssize_t nl,
                   const char *addr, bytes lab_json, int family) except -1:
        cdef Buf *b = &self.out
        cdef char plain[64]
        buf_put(b, b'{"target": ', 11)
        if lab_json is not None:
            buf_put(b, <const char *>lab_json, len(lab_json))
        else:
            put_json_str(b, name, nl)
        buf_put(b, b', "address": ', 13)
        if r.port:
            # the address alone; the port and what it said apart
            put_json_str(b, plain, ntop_into(family, r.addr, plain))
            buf_put(b, b', "port": ', 10)
            put_u64(b, r.port)
            buf_put(b, b', "state": "', 12)
            put_s(b, port_state(r))
            buf_put(b, b'"', 1)
        else:
            put_json_str(b, addr, strlen(addr))
        buf_put(b, b', "sent": ', 10)
        put_u64(b, d.sent)
        buf_put(b, b', "received": ', 14)
        put_u64(b, d.received)
        self._floats(r, d, b"", b"null", True)
        buf_put(b, b', "duplicates": ', 16)
        put_u64(b, r.dup)
        buf_put(b, b', "late": ', 10)
        put_u64(b, r.late)
        buf_put(b, b', "timeouts": ', 14)
        put_u64(b, r.timeouts)
        buf_put(b, b', "unreachable": ', 17)
        put_u64(b, r.unreach)
        buf_put(b, b', "time_exceeded": ', 19)
        put_u64(b, r.texc)
        buf_put(b, b', "send_errors": ', 17)
        put_u64(b, r.senderr)
        buf_put(b, b', "ttl": ', 9)
        if d.ttl:
            put_u64(b, d.ttl)
        else:
            buf_put(b, b"null", 4)
        buf_put(b, b', "error": ', 11)
        if d.err:
            buf_put(b, b'"', 1)
            self._err_text(r, d, family)
            buf_put(b, b'"', 1)
        else:
            buf_put(b, b"null", 4)
        return buf_put(b, b"}\n", 2)

    cdef int _csv(self, const SlotRow *r, Derived *d, const char *name, Py_ssize_t nl,
                  const char *addr, int family) except -1:
        cdef Buf *b = &self.out
        put_csv_str(b, name, nl)
        buf_put(b, b",", 1)
        put_csv_str(b, addr, strlen(addr))
        buf_put(b, b",", 1)
        put_u64(b, d.sent)
        buf_put(b, b",", 1)
        put_u64(b, d.received)
        self._floats(r, d, b",", b"", False)
        cdef uint32_t counts[6]
        cdef int k
        counts[0] = r.dup
        counts[1] = r.late
        counts[2] = r.timeouts
        counts[3] = r.unreach
        counts[4] = r.texc
        counts[5] = r.senderr
        for k in range(6):
            buf_put(b, b",", 1)
            put_u64(b, counts[k])
        buf_put(b, b",", 1)
        if d.ttl:
            put_u64(b, d.ttl)
        buf_put(b, b",", 1)
        if d.err:
            # our error texts hold no comma, quote or line end
            self._err_text(r, d, family)
        return buf_put(b, b"\n", 1)

    def write_text(self, text):
        """Append preformatted output (a header, a line made in Python)."""
        cdef bytes bb = (<str>text).encode("utf-8", "surrogateescape")
        buf_put(&self.out, <const char *>bb, len(bb))

    def count_row(self, bint alive):
        """Count a row formatted elsewhere (an unresolved name)."""
        self.rows += 1
        if alive:
            self.alive += 1

    def getvalue(self):
        """The pending output (bytes), and forget it."""
        v = PyBytes_FromStringAndSize(<char *>self.out.p, self.out.n) if self.out.n else b""
        self.out.n = 0
        return v

    def flush(self):
        """Hand the pending output to the stream (if any)."""
        if self.stream is not None and self.out.n:
            self.stream.write(self.getvalue())


# ---------------------------------------------------------------- columns
COLUMNS = (
    ("family", "B"), ("sent", "I"), ("received", "I"), ("duplicates", "I"), ("late", "I"),
    ("timeouts", "I"), ("unreachable", "I"), ("time_exceeded", "I"), ("send_errors", "I"),
    ("min_ms", "d"), ("avg_ms", "d"), ("max_ms", "d"), ("stddev_ms", "d"), ("jitter_ms", "d"),
    ("ttl", "B"), ("icmp_type", "B"), ("icmp_code", "B"),
)


cdef class Columns:
    """Results as arrays, one per field (``COLUMNS``; NaN where the HostResult has
    None, 0 for no TTL, family 0 for a name that did not resolve) plus ``address``:
    16 bytes a row (an IPv4 address in its first 4). Built from core rows with no
    Python object per target."""

    cdef readonly dict arrays
    cdef readonly Py_ssize_t n
    cdef array fam, u32, f64, ttl, typ, code
    cdef Buf addr

    def __cinit__(self):
        self.fam = _array_mod.array("B")
        self.u32 = _array_mod.array("I")
        self.f64 = _array_mod.array("d")
        self.ttl = _array_mod.array("B")
        self.typ = _array_mod.array("B")
        self.code = _array_mod.array("B")

    def __dealloc__(self):
        buf_free(&self.addr)

    cdef int _grow(self, Py_ssize_t k) except -1:
        cdef Py_ssize_t m = self.n + k
        resize_smart(self.fam, m)
        resize_smart(self.u32, m * 8)
        resize_smart(self.f64, m * 5)
        resize_smart(self.ttl, m)
        resize_smart(self.typ, m)
        resize_smart(self.code, m)
        buf_reserve(&self.addr, <size_t>k * 16)
        return 0

    def add_rows(self, const uint8_t[::1] rows, Py_ssize_t n, int family):
        """Append ``n`` core rows of ``family``."""
        cdef Py_ssize_t i, j
        cdef const SlotRow *r
        cdef Derived d
        cdef double nan = float("nan")
        if n < 0 or <size_t>rows.shape[0] < <size_t>n * sizeof(SlotRow):
            raise ValueError("rows holds fewer than n rows")
        self._grow(n)
        cdef uint8_t fam = 4 if family == AF_INET else 6
        for i in range(n):
            r = <const SlotRow *>&rows[i * sizeof(SlotRow)]
            derive(r, &d)
            j = self.n + i
            self.fam.data.as_uchars[j] = fam
            self.u32.data.as_uints[8 * j + 0] = <uint32_t>d.sent
            self.u32.data.as_uints[8 * j + 1] = r.received
            self.u32.data.as_uints[8 * j + 2] = r.dup
            self.u32.data.as_uints[8 * j + 3] = r.late
            self.u32.data.as_uints[8 * j + 4] = r.timeouts
            self.u32.data.as_uints[8 * j + 5] = r.unreach
            self.u32.data.as_uints[8 * j + 6] = r.texc
            self.u32.data.as_uints[8 * j + 7] = r.senderr
            self.f64.data.as_doubles[5 * j + 0] = d.min_ms if d.alive else nan
            self.f64.data.as_doubles[5 * j + 1] = d.avg_ms if d.alive else nan
            self.f64.data.as_doubles[5 * j + 2] = d.max_ms if d.alive else nan
            self.f64.data.as_doubles[5 * j + 3] = d.stddev_ms if d.alive else nan
            self.f64.data.as_doubles[5 * j + 4] = d.jitter_ms if d.alive and d.has_jitter else nan
            self.ttl.data.as_uchars[j] = d.ttl
            self.typ.data.as_uchars[j] = r.err_type
            self.code.data.as_uchars[j] = r.err_code
            memcpy(self.addr.p + 16 * j, r.addr, 16)
        self.addr.n += 16 * n
        self.n += n

    def add_missing(self):
        """Append a row for a name that did not resolve (nothing sent)."""
        self.add_rows(bytes(sizeof(SlotRow)), 1, AF_INET)
        self.fam.data.as_uchars[self.n - 1] = 0
        self.u32.data.as_uints[8 * (self.n - 1)] = 0

    def result(self):
        """dict column name -> array.array (or bytes for ``address``)."""
        out = {"family": self.fam}
        u32names = ("sent", "received", "duplicates", "late", "timeouts", "unreachable",
                    "time_exceeded", "send_errors")
        f64names = ("min_ms", "avg_ms", "max_ms", "stddev_ms", "jitter_ms")
        cdef Py_ssize_t k
        # de-interleave (rows were written interleaved so appending stays one pass)
        for k, name in enumerate(u32names):
            out[name] = self.u32[k::8]
        for k, name in enumerate(f64names):
            out[name] = self.f64[k::5]
        out["ttl"] = self.ttl
        out["icmp_type"] = self.typ
        out["icmp_code"] = self.code
        out["address"] = PyBytes_FromStringAndSize(<char *>self.addr.p, self.addr.n) if self.addr.n else b""
        return out


# ---------------------------------------------------------------- metrics exposition
cdef int put_i64(Buf *b, long long v) except -1:
    if v < 0:
        buf_put(b, "-", 1)
        return put_u64(b, <unsigned long long>(-(v + 1)) + 1)
    return put_u64(b, <unsigned long long>v)


def expo_lines(list heads, list tails, list rows, bint cumulative=False, list trailers=None):
    """Prometheus text lines of many series at once (metrics.render_chunks): for each
    series i and column j < len(rows[i]), ``heads[i] + tails[j] + str(v) + "\\n"``
    with v = rows[i][j] (its running sum along the row with ``cumulative``: histogram
    buckets), then ``trailers[i]`` when given. heads, tails and trailers are bytes,
    rows lists of ints; a row longer than tails is refused."""
    cdef Py_ssize_t n = len(heads), nt = len(tails), i, j, nr
    cdef Buf b
    cdef list row
    cdef bytes h, t
    cdef long long v, acc
    if len(rows) != n or (trailers is not None and len(trailers) != n):
        raise ValueError(f"{n} heads, {len(rows)} rows and "
                         f"{'no' if trailers is None else len(trailers)} trailers: give one each")
    for j in range(nt):
        if not isinstance(tails[j], bytes):
            raise TypeError(f"tail {j} is {type(tails[j]).__name__}, not bytes")
    b.p = NULL
    b.n = b.cap = 0
    try:
        for i in range(n):
            h = heads[i]
            row = rows[i]
            nr = len(row)
            if nr > nt:
                raise ValueError(f"row {i} has {nr} values for {nt} tails")
            acc = 0
            for j in range(nr):
                v = row[j]
                if cumulative:
                    acc += v
                    v = acc
                t = <bytes>tails[j]
                buf_reserve(&b, len(h) + len(t) + 24)
                memcpy(b.p + b.n, <char *>h, len(h))
                b.n += len(h)
                memcpy(b.p + b.n, <char *>t, len(t))
                b.n += len(t)
                put_i64(&b, v)
                b.p[b.n] = 10
                b.n += 1
            if trailers is not None:
                t = trailers[i]
                buf_put(&b, <char *>t, len(t))
        return PyBytes_FromStringAndSize(<char *>b.p, b.n)
    finally:
        buf_free(&b)
