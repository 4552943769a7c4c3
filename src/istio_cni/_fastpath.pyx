# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled hot path: network-namespace entry/exit and CNI input parsing.

Every pod ADD runs through here, so it avoids Python-level imports (no ``ctypes``,
no ``os.setns`` which Python 3.11 lacks) and keeps the syscalls in C.

Hazards this module absorbs (see the CNI plugins' ``pkg/ns`` README for the Go side):

* ``setns`` switches the *calling thread* only. Callers must not spawn threads or do
  network I/O while inside; ``Entered`` restores the original netns in ``__exit__``.
* If restoring fails the thread would keep working in the pod's netns. That must never
  happen silently, so ``__exit__`` raises ``NetnsRestoreFailed``, a ``BaseException``
  that ordinary ``except Exception`` handlers do not swallow; the plugin turns it into an
  error and exits, the agent kills itself.
* A path that exists but is not a network namespace (a plain file, a mount ns, a dir)
  is refused before any ``setns``: ``fstatfs`` must report nsfs and ``NS_GET_NSTYPE``
  must say ``CLONE_NEWNET``.
"""

from libc.errno cimport errno, EINVAL, ENOTDIR
from libc.string cimport strerror

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    enum:
        O_RDONLY
        O_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<sched.h>" nogil:
    int setns(int fd, int nstype)
    enum:
        CLONE_NEWNET

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
    int fstatfs(int fd, statfs *buf)

cdef extern from "<sys/stat.h>" nogil:
    struct stat:
        unsigned long st_ino
        unsigned long st_dev
    int fstat(int fd, stat *buf)

cdef enum:
    NSFS_MAGIC = 0x6e736673
    PROC_SUPER_MAGIC = 0x9fa0
    NS_GET_NSTYPE = 0xb703  # _IO(0xb7, 0x3)


class NotANetns(OSError):
    """The path exists but is not a network namespace (plain file, other ns type)."""


class NetnsRestoreFailed(BaseException):
    """setns back to the original namespace failed: the thread is in the wrong netns."""


cdef object _oserror(int err, object path):
    msg = strerror(err).decode("utf-8", "replace")
    return OSError(err, msg, path)


cpdef int open_netns(str path) except -1:
    """Open ``path`` and check it is a network namespace; return the fd (O_CLOEXEC)."""
    cdef bytes bpath = path.encode()
    cdef const char *p = bpath
    cdef int fd
    cdef statfs sfs
    cdef int nstype
    with nogil:
        fd = open(p, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        raise _oserror(errno, path)
    if fstatfs(fd, &sfs) != 0:
        err = errno
        close(fd)
        raise _oserror(err, path)
    # /proc/<pid>/ns/net is on proc (a magic link to nsfs) when opened through procfs
    # on some kernels; both are acceptable if the ioctl says "network".
    if sfs.f_type != NSFS_MAGIC and sfs.f_type != PROC_SUPER_MAGIC:
        close(fd)
        raise NotANetns(EINVAL, "not a network namespace (not on nsfs)", path)
    nstype = ioctl(fd, NS_GET_NSTYPE)
    if nstype != CLONE_NEWNET:
        close(fd)
        raise NotANetns(EINVAL, "not a network namespace", path)
    return fd


cpdef void close_fd(int fd) noexcept:
    close(fd)


cpdef int current_netns() except -1:
    """An fd for the calling thread's current netns (to come back to)."""
    cdef int fd
    with nogil:
        fd = open(b"/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    if fd < 0:
        raise _oserror(errno, "/proc/thread-self/ns/net")
    return fd


cpdef void enter_fd(int fd) except *:
    """setns(fd, CLONE_NEWNET) on the calling thread."""
    cdef int rc
    with nogil:
        rc = setns(fd, CLONE_NEWNET)
    if rc != 0:
        raise _oserror(errno, None)


cpdef tuple netns_id(int fd):
    """(st_dev, st_ino) of a namespace fd: equal ids mean the same namespace."""
    cdef stat st
    if fstat(fd, &st) != 0:
        raise _oserror(errno, None)
    return (st.st_dev, st.st_ino)


cdef class Entered:
    """Context manager: ``with Entered('/run/netns/x'): ...`` runs the body inside the netns.

    The target is opened and validated before anything changes; the original netns is
    restored in ``__exit__`` whatever happens in the body.
    """

    cdef int _home
    cdef int _target
    cdef readonly str path

    def __cinit__(self, str path):
        self._home = -1
        self._target = -1
        self.path = path

    def __enter__(self):
        self._target = open_netns(self.path)
        try:
            self._home = current_netns()
            enter_fd(self._target)
        except BaseException:
            close(self._target)
            self._target = -1
            if self._home >= 0:
                close(self._home)
                self._home = -1
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        cdef int rc
        cdef int err = 0
        with nogil:
            rc = setns(self._home, CLONE_NEWNET)
        if rc != 0:
            err = errno
        close(self._home)
        close(self._target)
        self._home = -1
        self._target = -1
        if rc != 0:
            raise NetnsRestoreFailed(
                f"could not return from netns {self.path}: {strerror(err).decode()}"
            )
        return False

    def __dealloc__(self):
        if self._home >= 0:
            close(self._home)
        if self._target >= 0:
            close(self._target)


cpdef dict parse_cni_args(str raw):
    """Parse ``CNI_ARGS`` (``K=V;K2=V2``) as libcni does; empty input gives ``{}``.

    Raises ``ValueError`` naming the bad pair. Values may contain ``=`` (only the first
    splits); empty pairs from a trailing ``;`` are ignored.
    """
    cdef dict out = {}
    cdef str pair, key
    cdef Py_ssize_t eq
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        eq = pair.find("=")
        if eq <= 0:
            raise ValueError(f"CNI_ARGS: invalid pair {pair!r} (want KEY=VALUE)")
        key = pair[:eq]
        out[key] = pair[eq + 1:]
    return out



# ---------------------------------------------------------------------------------------
# JSON: the CNI netconf in, the result/error out, without importing ``json`` (which pulls
# in ``re`` and ``enum``: several ms per exec). Strict RFC 8259, same results as the
# stdlib for valid input (the unit tests compare both on generated documents).
# ---------------------------------------------------------------------------------------

from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef int _MAX_DEPTH = 512


cdef class _Reader:
    cdef bytes buf
    cdef const unsigned char *s
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef int depth

    def __cinit__(self, bytes buf):
        self.buf = buf
        self.s = buf
        self.n = len(buf)
        self.i = 0
        self.depth = 0

    cdef object fail(self, str what):
        return ValueError(f"{what} at byte {self.i}")

    cdef inline void ws(self):
        cdef unsigned char c
        while self.i < self.n:
            c = self.s[self.i]
            if c == 32 or c == 10 or c == 13 or c == 9:
                self.i += 1
            else:
                break

    cdef object value(self):
        cdef unsigned char c
        self.ws()
        if self.i >= self.n:
            raise self.fail("unexpected end of input")
        c = self.s[self.i]
        if c == 123:  # {
            return self.obj()
        if c == 91:  # [
            return self.arr()
        if c == 34:  # "
            return self.string()
        if c == 116 and self.n - self.i >= 4 and self.s[self.i+1] == 114 and self.s[self.i+2] == 117 and self.s[self.i+3] == 101:
            self.i += 4
            return True
        if c == 102 and self.n - self.i >= 5 and self.buf[self.i:self.i+5] == b"false":
            self.i += 5
            return False
        if c == 110 and self.n - self.i >= 4 and self.buf[self.i:self.i+4] == b"null":
            self.i += 4
            return None
        if c == 45 or (48 <= c <= 57):
            return self.number()
        raise self.fail(f"unexpected character {chr(c)!r}")

    cdef object obj(self):
        cdef dict out = {}
        cdef object key
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail("nesting too deep")
        self.i += 1
        self.ws()
        if self.i < self.n and self.s[self.i] == 125:
            self.i += 1
            self.depth -= 1
            return out
        while True:
            self.ws()
            if self.i >= self.n or self.s[self.i] != 34:
                raise self.fail("expected a string key")
            key = self.string()
            self.ws()
            if self.i >= self.n or self.s[self.i] != 58:
                raise self.fail("expected ':'")
            self.i += 1
            out[key] = self.value()
            self.ws()
            if self.i >= self.n:
                raise self.fail("unterminated object")
            if self.s[self.i] == 44:
                self.i += 1
                continue
            if self.s[self.i] == 125:
                self.i += 1
                self.depth -= 1
                return out
            raise self.fail("expected ',' or '}'")

    cdef object arr(self):
        cdef list out = []
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail("nesting too deep")
        self.i += 1
        self.ws()
        if self.i < self.n and self.s[self.i] == 93:
            self.i += 1
            self.depth -= 1
            return out
        while True:
            out.append(self.value())
            self.ws()
            if self.i >= self.n:
                raise self.fail("unterminated array")
            if self.s[self.i] == 44:
                self.i += 1
                continue
            if self.s[self.i] == 93:
                self.i += 1
                self.depth -= 1
                return out
            raise self.fail("expected ',' or ']'")

    cdef int hex4(self) except -1:
        cdef int v = 0
        cdef int k
        cdef unsigned char c
        if self.n - self.i < 4:
            raise self.fail("truncated \\u escape")
        for k in range(4):
            c = self.s[self.i + k]
            v <<= 4
            if 48 <= c <= 57:
                v |= c - 48
            elif 97 <= c <= 102:
                v |= c - 87
            elif 65 <= c <= 70:
                v |= c - 55
            else:
                raise self.fail("bad \\u escape")
        self.i += 4
        return v

    cdef object string(self):
        cdef Py_ssize_t start
        cdef unsigned char c
        cdef list parts = None
        cdef int cp, lo
        self.i += 1
        start = self.i
        while True:
            if self.i >= self.n:
                raise self.fail("unterminated string")
            c = self.s[self.i]
            if c == 34:
                chunk = PyUnicode_DecodeUTF8(<const char*>self.s + start, self.i - start, NULL)
                self.i += 1
                if parts is None:
                    return chunk
                parts.append(chunk)
                return "".join(parts)
            if c < 32:
                raise self.fail("control character in string")
            if c != 92:
                self.i += 1
                continue
            if parts is None:
                parts = []
            parts.append(PyUnicode_DecodeUTF8(<const char*>self.s + start, self.i - start, NULL))
            self.i += 1
            if self.i >= self.n:
                raise self.fail("unterminated escape")
            c = self.s[self.i]
            self.i += 1
            if c == 34:
                parts.append('"')
            elif c == 92:
                parts.append("\\")
            elif c == 47:
                parts.append("/")
            elif c == 98:
                parts.append("\b")
            elif c == 102:
                parts.append("\f")
            elif c == 110:
                parts.append("\n")
            elif c == 114:
                parts.append("\r")
            elif c == 116:
                parts.append("\t")
            elif c == 117:
                cp = self.hex4()
                if 0xD800 <= cp <= 0xDBFF and self.n - self.i >= 6 and self.s[self.i] == 92 and self.s[self.i+1] == 117:
                    self.i += 2
                    lo = self.hex4()
                    if 0xDC00 <= lo <= 0xDFFF:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                        parts.append(chr(cp))
                    else:
                        parts.append(chr(cp))
                        parts.append(chr(lo))
                else:
                    parts.append(chr(cp))
            else:
                raise self.fail("invalid escape")
            start = self.i

    cdef object number(self):
        cdef Py_ssize_t start = self.i
        cdef bint is_float = False
        cdef unsigned char c
        if self.s[self.i] == 45:
            self.i += 1
        if self.i >= self.n:
            raise self.fail("truncated number")
        if self.s[self.i] == 48:
            self.i += 1
        elif 49 <= self.s[self.i] <= 57:
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        else:
            raise self.fail("bad number")
        if self.i < self.n and self.s[self.i] == 46:
            is_float = True
            self.i += 1
            if self.i >= self.n or not (48 <= self.s[self.i] <= 57):
                raise self.fail("bad fraction")
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        if self.i < self.n and (self.s[self.i] == 101 or self.s[self.i] == 69):
            is_float = True
            self.i += 1
            if self.i < self.n and (self.s[self.i] == 43 or self.s[self.i] == 45):
                self.i += 1
            if self.i >= self.n or not (48 <= self.s[self.i] <= 57):
                raise self.fail("bad exponent")
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        text = self.buf[start:self.i]
        return float(text) if is_float else int(text)


def json_loads(data):
    """Decode one JSON document (bytes, bytearray or str); ``ValueError`` on bad input."""
    cdef _Reader r
    if isinstance(data, str):
        data = (<str>data).encode("utf-8", "surrogatepass")
    elif not isinstance(data, bytes):
        data = bytes(data)
    r = _Reader(data)
    try:
        out = r.value()
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 in JSON string: {e.reason}") from None
    r.ws()
    if r.i != r.n:
        raise r.fail("extra data after the document")
    return out


cdef str _ESC_CHARS = '"\\\n\r\t\b\f'


cdef str _quote(str s):
    cdef Py_UCS4 ch
    cdef bint plain = True
    for ch in s:
        if ch < 32 or ch == 34 or ch == 92:
            plain = False
            break
    if plain:
        return '"' + s + '"'
    out = []
    for ch in s:
        if ch == 34:
            out.append('\\"')
        elif ch == 92:
            out.append("\\\\")
        elif ch == 10:
            out.append("\\n")
        elif ch == 13:
            out.append("\\r")
        elif ch == 9:
            out.append("\\t")
        elif ch == 8:
            out.append("\\b")
        elif ch == 12:
            out.append("\\f")
        elif ch < 32:
            out.append("\\u%04x" % <int>ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


cdef void _dump(object o, list out, int depth) except *:
    if depth > _MAX_DEPTH:
        raise ValueError("nesting too deep to encode")
    if o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif isinstance(o, str):
        out.append(_quote(o))
    elif isinstance(o, int):
        out.append(int.__repr__(o))
    elif isinstance(o, float):
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError(f"cannot encode {o!r} as JSON")
        out.append(float.__repr__(o))
    elif isinstance(o, dict):
        out.append("{")
        first = True
        for k, v in (<dict>o).items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            if not first:
                out.append(",")
            first = False
            out.append(_quote(k))
            out.append(":")
            _dump(v, out, depth + 1)
        out.append("}")
    elif isinstance(o, (list, tuple)):
        out.append("[")
        first = True
        for v in o:
            if not first:
                out.append(",")
            first = False
            _dump(v, out, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def json_dumps(obj):
    """Encode compactly (``separators=(",", ":")``, non-ASCII kept), key order preserved."""
    cdef list out = []
    _dump(obj, out, 0)
    return "".join(out)
