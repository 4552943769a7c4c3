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

# Defined with the other error types (errors.py is loaded on every exec anyway); imported
# here so ``_fastpath.NotANetns`` stays the same class.
from istio_cni.errors import NetnsRestoreFailed, NotANetns, TLSFailure, TLSMaterialError, TLSUnavailable

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


cpdef list parse_cni_args(str raw):
    """Split ``CNI_ARGS`` exactly as libcni's ``types.LoadArgs`` does: ``[(key, value), ...]``
    in order (a key may repeat; LoadArgs sets the field again); empty input gives ``[]``.

    Pairs are separated by ``;`` and each must split on ``=`` into exactly two parts, so an
    empty pair (a trailing ``;``) and a value holding ``=`` are errors, as in libcni. Raises
    ``ValueError`` naming the bad pair (shortened). Which keys are known, and what
    ``IgnoreUnknown`` does, are the caller's (``config.parse_k8s_args``).
    """
    cdef list out = []
    cdef str pair
    cdef list kv
    if not raw:
        return out
    for pair in raw.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            shown = pair if len(pair) <= 80 else pair[:80] + "..."
            raise ValueError(f"CNI_ARGS: invalid pair {shown!r} (want KEY=VALUE)")
        out.append((kv[0], kv[1]))
    return out


# ---------------------------------------------------------------------------------------
# JSON: the CNI netconf in, the result/error out, on the standard library's own C engine.
#
# ``_json`` is what ``json.loads``/``json.dumps`` run on; the ``json`` package around it
# costs ~13 ms per exec here (it imports ``re`` and builds its decoder classes), ``_json``
# alone ~0.3 ms. Measured on an ADD through the launcher (benchmarks/RESULTS.md, "JSON
# codec"): same import time as the former hand-written codec, so the reference engine
# was kept and the hand-written decoder/encoder removed. What this adds to the engine:
#
# * decoding refuses (``ValueError``) what the stdlib would turn into values no CNI peer
#   can mean: invalid UTF-8 (the stdlib decodes bytes with ``surrogatepass`` and sniffs
#   UTF-16/32), a byte-order mark, ``NaN``/``Infinity``, numbers beyond the double range,
#   lone surrogates (``"\ud800"``), nesting deeper than ``MAX_DEPTH``. Everything else
#   decodes to exactly what ``json.loads`` returns.
# * encoding is ``json.dumps(obj, separators=(",", ":"), allow_nan=False)``: pure ASCII
#   (non-ASCII as ``\uXXXX``), so stdout is valid UTF-8 on any stream, and ``json.loads``
#   of the output equals the input; strings holding surrogate code points (invalid
#   Unicode, e.g. undecodable bytes in os.environ) are refused, as no JSON reads back as them.
# ---------------------------------------------------------------------------------------

MAX_DEPTH = 512
_INF = float("inf")


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text):
    v = float(text)
    if v == _INF or v == -_INF:
        raise ValueError("number out of the double range")
    return v


def _not_serializable(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_int = int
    parse_float = staticmethod(_finite_float)
    parse_constant = staticmethod(_refuse_constant)
    memo = None


cdef object _scan_once = None
cdef object _quote_ascii = None
cdef object _make_encoder = None


cdef void _load_engine() except *:
    global _scan_once, _quote_ascii, _make_encoder
    import _json

    _quote_ascii = _json.encode_basestring_ascii
    _make_encoder = _json.make_encoder
    _scan_once = _json.make_scanner(_ScanContext())


cdef Py_ssize_t _skip_ws(str s, Py_ssize_t i):
    cdef Py_ssize_t n = len(s)
    cdef Py_UCS4 c
    while i < n:
        c = s[i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            i += 1
        else:
            break
    return i


cdef bint _bad_str(str s):
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


cdef bint _has_surrogate(object value):
    """Does any string in ``value`` (keys included) hold a surrogate code point?"""
    cdef list todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if _bad_str(<str>v):
                return True
        elif isinstance(v, dict):
            for k, x in (<dict>v).items():
                if isinstance(k, str) and _bad_str(<str>k):
                    return True
                todo.append(x)
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
    return False


cdef int _depth(object value):
    cdef int deepest = 0
    cdef int d
    cdef list todo = [(value, 1)]
    while todo:
        v, d = todo.pop()
        if type(v) is dict:
            v = list((<dict>v).values())
        elif type(v) is not list:
            continue
        if d > deepest:
            deepest = d
        for x in <list>v:
            todo.append((x, d + 1))
    return deepest


cdef tuple _scan(str text, Py_ssize_t i):
    try:
        return _scan_once(text, i)
    except StopIteration as e:
        raise ValueError(f"expecting a JSON value at char {e.value}") from None
    except RecursionError:
        raise ValueError(f"JSON nesting deeper than {MAX_DEPTH}") from None


def json_loads(data):
    """Decode one JSON document (bytes, bytearray, memoryview or str) like ``json.loads``,
    or raise ``ValueError`` (see the section comment for what is refused)."""
    cdef str text
    cdef Py_ssize_t i, end
    if _scan_once is None:
        _load_engine()
    if isinstance(data, str):
        text = <str>data
        if _bad_str(text):
            raise ValueError("lone surrogate in JSON text")
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
    i = _skip_ws(text, 0)
    try:
        value, end = _scan(text, i)
    except SystemError:
        # Python <= 3.11's _json raises its JSONDecodeError by looking json.decoder up in
        # sys.modules, without importing it (SystemError when absent): import it on this,
        # the error path only, and scan again for the real message.
        import json.decoder

        _scan(text, i)
        raise ValueError("invalid JSON") from None
    end = _skip_ws(text, end)
    if end != len(text):
        raise ValueError(f"extra data after the JSON document at char {end}")
    if ("\\ud" in text or "\\uD" in text) and _has_surrogate(value):
        raise ValueError("lone surrogate escape in a JSON string")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ValueError(f"JSON nesting deeper than {MAX_DEPTH}")
    return value


def json_dumps(obj):
    """``json.dumps(obj, separators=(",", ":"), allow_nan=False)``: compact, key order kept,
    pure ASCII. ``ValueError`` for NaN/infinity, cycles and too deep nesting; ``TypeError``
    for objects JSON has no form for."""
    if _scan_once is None:
        _load_engine()
    encode = _make_encoder({}, _not_serializable, _quote_ascii, None, ":", ",", False, False, False)
    try:
        out = "".join(encode(obj, 0))
    except RecursionError:
        raise ValueError("nesting too deep to encode as JSON") from None
    # A surrogate code point has no JSON form that reads back as itself (its escape would
    # pair up with a neighbour, or stand for invalid Unicode): refused. Astral characters
    # are escaped as surrogate pairs too, so "\ud" in the output only prompts the check.
    if "\\ud" in out and _has_surrogate(obj):
        raise ValueError("a string holds a surrogate code point (invalid Unicode), not encodable as JSON")
    return out


def json_quote(str s):
    """``s`` as a JSON string literal (ASCII, every control character escaped)."""
    if _scan_once is None:
        _load_engine()
    return _quote_ascii(s)


# Standard base64 alphabet -> 6-bit value; 255 marks a byte outside it.
cdef unsigned char _B64_VALUE[256]


cdef void _b64_table() noexcept:
    cdef const char *alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    cdef int i
    for i in range(256):
        _B64_VALUE[i] = 255
    for i in range(64):
        _B64_VALUE[<unsigned char>alphabet[i]] = i


_b64_table()


def b64decode(str s):
    """Padded standard base64 (RFC 4648 section 4) -> bytes, for the kubeconfig's ``*-data``
    fields, as Go's ``base64.StdEncoding`` decodes them for client-go (trailing bits ignored),
    without loading ``binascii`` (a shared module that pulls in libz: ~0.45 ms and ~120 KiB
    per ADD).
    ``ValueError`` unless the length is a multiple of 4, every character is in the alphabet
    and ``=`` appears only as one or two trailing pad characters."""
    cdef bytes raw
    try:
        raw = s.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("base64: non-ASCII character") from None
    cdef Py_ssize_t n = len(raw), pad = 0, i, o = 0
    if n % 4:
        raise ValueError("base64: length is not a multiple of 4")
    cdef const unsigned char *p = raw
    while pad < 2 and pad < n and p[n - 1 - pad] == b"="[0]:
        pad += 1
    cdef bytearray out = bytearray(n // 4 * 3 - pad)
    cdef unsigned char *q = out
    cdef unsigned int acc = 0, v
    for i in range(n - pad):
        v = _B64_VALUE[p[i]]
        if v == 255:
            raise ValueError("base64: invalid character or misplaced padding")
        acc = (acc << 6) | v
        if i % 4 == 3:
            q[o] = (acc >> 16) & 0xFF
            q[o + 1] = (acc >> 8) & 0xFF
            q[o + 2] = acc & 0xFF
            o += 3
            acc = 0
    if pad == 1:  # 3 characters left: 18 bits -> 2 bytes (the low 2 bits are padding)
        q[o] = (acc >> 10) & 0xFF
        q[o + 1] = (acc >> 2) & 0xFF
    elif pad == 2:  # 2 characters left: 12 bits -> 1 byte
        q[o] = (acc >> 4) & 0xFF
    return bytes(out)


# ---- OpenSSL on C threads: its first-use set-up, then the direct path's pod GET ---------------
#
# A fresh process pays ~2.4 ms to load libssl/libcrypto (relocations) and ~2 ms for OpenSSL's
# first SSL_CTX_new (config file, providers, fetching every cipher and digest into the
# library context's caches); a second context costs ~0.2 ms. An ADD that reaches Python is
# most likely one that GETs its pod, so ``openssl_warm_start`` has a plain C thread (no
# Python, no GIL: it never waits for the interpreter nor makes it wait) do both while the
# interpreter imports and parses. The GET itself is ``HttpsGet``: connect, handshake,
# request and the whole answer on another C thread (_tlsget.h says why and how), while the
# interpreter imports what the ADD needs after the answer. The work is the same as on the
# Python path, only on another core when one is free. Both threads are joined before the
# plugin runs anything else (the restore backend forks later), and at a normal exit (see
# openssl_warm_start). benchmarks/RESULTS.md, "OpenSSL off the critical path" and "The pod
# GET on a C thread".

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strlen

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    enum:
        AF_INET
        AF_INET6

cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC

cdef extern from "_tlsget.h" nogil:
    ctypedef struct tg_get:
        int family
        unsigned char addr[16]
        int port
        char ip[48]
        int insecure
        char *ca_pem
        size_t ca_len
        char *ca_file
        char *cert_file
        char *key_file
        char *session_file
        char *request
        size_t request_len
        double deadline
        size_t cap
        char *buf
        size_t len
        int kind
        int err
        int resumed
        char msg[400]
        double at[6]
        int done_fd
        pthread_t thread
        int started
    double tg_warm_at[3]
    void *tg_warm(void *arg) noexcept nogil
    void *tg_thread(void *arg) noexcept nogil
    int tg_wait_done(tg_get *g, double timeout)
    int tg_poll(int fd, short events, double deadline)
    double tg_now()
    int tg_profile(uint64_t *options, long *min_version, int *verify_mode, unsigned long *flags,
                   char *names, size_t names_len)
    enum:
        TG_OK
        TG_ERRNO
        TG_TIMEOUT
        TG_TLS
        TG_VERIFY
        TG_MATERIAL
        TG_TOO_LARGE
        TG_SETUP

cdef pthread_t _warm_thread
cdef int _warm_state = 0  # 0: never started, 1: running, 2: joined (once per process)


def openssl_warm_start():
    """Start the OpenSSL warm-up thread (see above), once per process; False if it was started
    before or the thread cannot be made (then nothing changes: the GET does it all itself)."""
    global _warm_state
    if _warm_state != 0:
        return False
    if pthread_create(&_warm_thread, NULL, tg_warm, NULL) != 0:
        return False
    _warm_state = 1
    # A normal exit runs OpenSSL's own exit handler (OPENSSL_cleanup), which must not free
    # what the thread is still setting up: Python's exit handlers run first and join it. The
    # plugin's os._exit runs no C exit handler, so it need not wait (__main__._exit_now).
    import atexit

    atexit.register(openssl_warm_wait)
    return True


def openssl_warm_steps():
    """When the warm-up thread started, had libssl loaded and had its context (``time.monotonic()``
    seconds; None: not reached). For the phase probe (benchmarks/phaseprobe.py)."""
    return {name: (tg_warm_at[i] or None) for i, name in enumerate(("start", "loaded", "context"))}


def openssl_warm_wait():
    """Wait (without the GIL) for the warm-up thread, if one is running; idempotent."""
    global _warm_state
    if _warm_state != 1:
        return
    with nogil:
        pthread_join(_warm_thread, NULL)
    _warm_state = 2


cdef char *_copy(bytes data, str what) except? NULL:
    """A malloc'd NUL-terminated copy of ``data`` (a path or the request): no NUL inside."""
    if b"\0" in data:
        raise ValueError(f"{what} contains a NUL byte")
    cdef Py_ssize_t n = len(data)
    cdef char *out = <char *>malloc(n + 1)
    if out == NULL:
        raise MemoryError()
    memcpy(out, <const char *>data, n)
    out[n] = 0
    return out


cdef bytes _path(str path):
    return path.encode("utf-8", "surrogateescape")  # what os.fsencode gives on Linux


_STEP_NAMES = ("start", "context", "connected", "handshake", "answer", "done")  # _tlsget.h's tg_step


cdef class HttpsGet:
    """One HTTPS exchange on a C thread, started on construction (``_tlsget.h``).

    ``host`` must be an IP literal (``ValueError`` otherwise: the caller takes the Python
    path). Trust: ``insecure`` (no verification), else ``ca_pem`` (PEM bytes), else
    ``ca_file``, else the system's store; ``cert_file``/``key_file``: the client's
    credentials. ``request``: the bytes sent once the handshake is done; ``deadline``:
    ``time.monotonic()`` value bounding every wait; ``cap``: the most bytes of answer taken.

    ``done()`` says, without waiting, whether the answer (or the failure) is there;
    ``result()`` waits for it and returns every byte the server sent before closing, or
    raises: ``OSError`` for socket errors, ``TimeoutError``, ``errors.TLSFailure`` (its
    verification failures name CERTIFICATE_VERIFY_FAILED as ``_ssl`` does),
    ``errors.TLSMaterialError``, ``ValueError`` for an answer over ``cap``,
    ``errors.TLSUnavailable`` when this OpenSSL cannot be used."""

    cdef tg_get *g
    cdef bint joined
    cdef bint abandoned

    def __cinit__(self, str host, int port, bytes request, double deadline, Py_ssize_t cap, *,
                  bint insecure=False, bytes ca_pem=None, str ca_file=None, str cert_file=None,
                  str key_file=None, str session_file=None):
        cdef tg_get *g = <tg_get *>calloc(1, sizeof(tg_get))
        if g == NULL:
            raise MemoryError()
        self.g = g
        g.done_fd = -1
        raw_host = host.encode("ascii", "replace")
        if len(raw_host) >= <Py_ssize_t>sizeof(g.ip) or b"\0" in raw_host:
            raise ValueError(f"{host[:60]!r} is not an IP address")
        memcpy(g.ip, <const char *>raw_host, len(raw_host))
        g.ip[len(raw_host)] = 0
        if inet_pton(AF_INET, g.ip, g.addr) == 1:
            g.family = AF_INET
        elif inet_pton(AF_INET6, g.ip, g.addr) == 1:
            g.family = AF_INET6
        else:
            raise ValueError(f"{host[:60]!r} is not an IP address")
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        if cap <= 0:
            raise ValueError("cap must be positive")
        g.port = port
        g.insecure = insecure
        g.deadline = deadline
        g.cap = <size_t>cap
        g.request = _copy(request, "the request")
        g.request_len = <size_t>len(request)
        if ca_pem is not None:
            g.ca_pem = _copy(ca_pem, "certificate-authority-data")
            g.ca_len = <size_t>len(ca_pem)
        if ca_file:
            g.ca_file = _copy(_path(ca_file), "the certificate-authority path")
        if cert_file:
            g.cert_file = _copy(_path(cert_file), "the client certificate path")
        if key_file:
            g.key_file = _copy(_path(key_file), "the client key path")
        if session_file:
            g.session_file = _copy(_path(session_file), "the TLS session path")
        g.done_fd = eventfd(0, EFD_CLOEXEC)
        if g.done_fd < 0:
            raise TLSUnavailable(f"eventfd: {strerror(errno).decode()}")
        if pthread_create(&g.thread, NULL, tg_thread, g) != 0:
            raise TLSUnavailable("cannot start the TLS thread")
        g.started = 1

    def done(self):
        """Is the exchange over (answer or failure)? Never waits."""
        return self.g.started == 0 or tg_wait_done(self.g, 0.0) != 0

    def steps(self):
        """When each step of the exchange ended (``time.monotonic()`` seconds; None: not
        reached): the thread ran, held a client context, was connected, had the TLS handshake,
        had the answer's first bytes, was done. For the phase probe (benchmarks/phaseprobe.py)."""
        return {name: (self.g.at[i] or None) for i, name in enumerate(_STEP_NAMES)}

    def resumed(self):
        """Did the finished exchange resume the kept TLS session?"""
        return bool(self.joined and self.g.resumed)

    def result(self):
        """Wait for the exchange (at most until the deadline, plus 1 s for the thread to
        notice it) and return the answer's bytes, or raise (see the class)."""
        cdef tg_get *g = self.g
        cdef double timeout
        cdef int finished
        if not g.started or self.abandoned:
            raise TLSUnavailable("the exchange did not start")
        if not self.joined:
            timeout = g.deadline - tg_now() + 1.0
            with nogil:
                finished = tg_wait_done(g, timeout if timeout > 0 else 0.0)
            if not finished:
                # Stuck outside a bounded wait (a CA file that is a FIFO, say): the thread
                # keeps its struct, which is never freed (a one-shot process, failing now).
                self.abandoned = True
                raise TimeoutError("the TLS exchange did not end by its deadline")
            with nogil:
                pthread_join(g.thread, NULL)
            self.joined = True
            openssl_warm_wait()  # no thread of ours outlives the GET (the restore backend forks)
        if g.kind == TG_OK:
            return g.buf[:g.len] if g.len else b""
        _raise_outcome(g.kind, g.err, g.msg.decode("utf-8", "replace"), g.cap)

    def __dealloc__(self):
        cdef tg_get *g = self.g
        if g == NULL or self.abandoned:
            return
        if g.started and not self.joined:
            with nogil:  # bounded: every wait of the thread ends at its deadline
                pthread_join(g.thread, NULL)
        if g.done_fd >= 0:
            close(g.done_fd)
        free(g.ca_pem)
        free(g.ca_file)
        free(g.cert_file)
        free(g.key_file)
        free(g.session_file)
        free(g.request)
        free(g.buf)
        free(g)
        self.g = NULL


cdef _raise_outcome(int kind, int err, str msg, size_t cap):
    """The exception of a failed exchange (tg_kind), as HttpsGet.result documents it."""
    if kind == TG_ERRNO:
        raise OSError(err, f"{strerror(err).decode('utf-8', 'replace')} ({msg})")
    if kind == TG_TIMEOUT:
        raise TimeoutError(msg)
    if kind == TG_TLS or kind == TG_VERIFY:
        raise TLSFailure(msg)
    if kind == TG_MATERIAL:
        raise TLSMaterialError(msg)
    if kind == TG_TOO_LARGE:
        raise ValueError(f"{msg} ({cap} bytes)")
    raise TLSUnavailable(msg)


_PREFETCH_MAGIC = b"istio-cni-front-prefetch 1\n"  # src/front/prefetch.h
_OUTCOME_MAGIC = b"istio-cni-prefetch-outcome 1\n"
_OUTCOME_HEAD = len(_OUTCOME_MAGIC) + 16 + 6 * 8 + 8


cdef class Prefetched:
    """The pod GET the compiled front started before the interpreter (src/front/prefetch.h):
    the exchange its child process makes with this module's C client, read from the front's
    record (``record_fd``) once ``done_fd`` (a pipe) reaches EOF.

    ``params()``: the exchange's arguments as the front wrote them (JSON bytes: HttpsGet's
    arguments and the deadline), None if the record is not the front's. The caller takes the
    outcome only for the arguments it would have passed to HttpsGet itself. Then ``done()``,
    ``result()`` (the same bytes or exceptions as ``HttpsGet.result``, or None when the child
    left no outcome: the caller makes its own exchange), ``resumed()`` and ``steps()`` as
    HttpsGet's. Every read is bounded by the record's size; a damaged record is no outcome."""

    cdef int record_fd
    cdef int done_fd
    cdef Py_ssize_t outcome_at
    cdef double deadline
    cdef size_t cap
    cdef object outcome  # (kind, err, resumed, msg, steps, answer) once read

    def __cinit__(self, int record_fd, int done_fd):
        self.record_fd = record_fd
        self.done_fd = done_fd
        self.outcome_at = -1
        self.deadline = 0.0
        self.cap = 0
        self.outcome = None

    def params(self):
        import posix

        try:
            size = posix.fstat(self.record_fd).st_size
            head = posix.pread(self.record_fd, len(_PREFETCH_MAGIC) + 8, 0)
            if len(head) != len(_PREFETCH_MAGIC) + 8 or not head.startswith(_PREFETCH_MAGIC):
                return None
            n = int.from_bytes(head[len(_PREFETCH_MAGIC):], "little")
            if n > size - len(head):
                return None
            params = posix.pread(self.record_fd, n, len(head))
        except (OSError, ValueError, OverflowError):
            return None
        if len(params) != n:
            return None
        self.outcome_at = len(head) + n
        return params

    def arm(self, double deadline, Py_ssize_t cap):
        """The deadline and answer cap of the exchange the caller took (from ``params()``)."""
        self.deadline = deadline
        self.cap = <size_t>cap

    def done(self):
        """Has the front's child finished (outcome written, or gone)? Never waits."""
        return tg_poll(self.done_fd, POLLIN, 0.0) != 0

    def resumed(self):
        return bool(self.outcome is not None and self.outcome[2])

    def steps(self):
        if self.outcome is None:
            return {name: None for name in _STEP_NAMES}
        return dict(self.outcome[4])

    def result(self):
        """The answer's bytes, or the exchange's exception; None: the child left no outcome.
        Waits at most until the deadline, plus 1 s (as HttpsGet)."""
        cdef double until = self.deadline + 1.0
        cdef int ready
        if self.outcome is None:
            if self.outcome_at < 0:
                return None
            with nogil:
                ready = tg_poll(self.done_fd, POLLIN, until)
            if ready <= 0:
                raise TimeoutError("the front's TLS exchange did not end by its deadline")
            self.outcome = self._read_outcome()
            if self.outcome is None:
                return None
        kind, err, _, msg, _, answer = self.outcome
        if kind == TG_OK:
            return answer
        _raise_outcome(kind, err, msg, self.cap)

    def _read_outcome(self):
        import posix

        try:
            size = posix.fstat(self.record_fd).st_size
            head = posix.pread(self.record_fd, _OUTCOME_HEAD, self.outcome_at)
        except (OSError, ValueError, OverflowError):
            return None
        m = len(_OUTCOME_MAGIC)
        if len(head) != _OUTCOME_HEAD or not head.startswith(_OUTCOME_MAGIC):
            return None
        kind = int.from_bytes(head[m:m + 4], "little", signed=True)
        err = int.from_bytes(head[m + 4:m + 8], "little", signed=True)
        resumed = int.from_bytes(head[m + 8:m + 12], "little", signed=True)
        msg_len = int.from_bytes(head[m + 12:m + 16], "little")
        at = memoryview(head[m + 16:m + 64]).cast("d")
        answer_len = int.from_bytes(head[m + 64:m + 72], "little")
        start = self.outcome_at + _OUTCOME_HEAD
        if msg_len > 400 or answer_len > self.cap or start + msg_len + answer_len > size:
            return None
        try:
            msg = posix.pread(self.record_fd, msg_len, start).decode("utf-8", "replace")
            answer = posix.pread(self.record_fd, answer_len, start + msg_len) if answer_len else b""
        except (OSError, ValueError, OverflowError):
            return None
        if len(answer) != answer_len or not TG_OK <= kind <= TG_SETUP:
            return None
        return kind, err, resumed, msg, [(n, at[i] or None) for i, n in enumerate(_STEP_NAMES)], answer

    def close(self):
        """Release both fds (idempotent)."""
        for fd in (self.record_fd, self.done_fd):
            if fd >= 0:
                close(fd)
        self.record_fd = self.done_fd = -1


def is_ip_literal(str host):
    """Is ``host`` an IPv4 or IPv6 address literal (what ``HttpsGet`` connects to)?"""
    cdef unsigned char addr[16]
    raw = host.encode("ascii", "replace")
    if b"\0" in raw:
        return False
    return inet_pton(AF_INET, raw, addr) == 1 or inet_pton(AF_INET6, raw, addr) == 1


def tls_client_profile():
    """What ``HttpsGet``'s contexts are made with: (options, minimum version, verify mode,
    verify flags, cipher names); None when OpenSSL is unusable. For the parity test against
    the interpreter's own ``_ssl``."""
    cdef uint64_t options = 0
    cdef long min_version = 0
    cdef int verify_mode = 0
    cdef unsigned long flags = 0
    cdef char names[8192]
    if not tg_profile(&options, &min_version, &verify_mode, &flags, names, sizeof(names)):
        return None
    return options, min_version, verify_mode, flags, names.decode().split(":")
