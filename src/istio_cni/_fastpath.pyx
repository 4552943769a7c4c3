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


def json_loads(data):
    """Decode CNI JSON input (bytes or str)."""
    import json
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    return json.loads(data)


def json_dumps(obj):
    """Encode a result/error object compactly (key order preserved)."""
    import json
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
