"""inotify over libc (ctypes): block until something changes in the watched directories.

Directories are watched (not files): an atomic rename-over replaces a file's inode and would
silently drop a watch on the file itself, while the directory watch sees the IN_MOVED_TO.
kubelet's projected-token rotation swaps the ``..data`` symlink inside the service-account
directory, which shows up there as IN_MOVED_TO/IN_CREATE as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

DIR_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Event:
    __slots__ = ("path", "name", "mask")

    def __init__(self, path: str, name: str, mask: int) -> None:
        self.path, self.name, self.mask = path, name, mask

    def __repr__(self) -> str:
        return f"Event({self.path!r}, {self.name!r}, {self.mask:#x})"


class Watcher:
    """``with Watcher() as w: w.add(dir); events = w.wait(timeout)``."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd
        self.paths: dict[int, str] = {}
        # A pipe lets another thread (the SIGTERM handler) wake a blocked ``wait``.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def add(self, path: str, mask: int = DIR_EVENTS) -> bool:
        """Watch a directory; False (not an error) when it does not exist (yet)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR)
        if wd < 0:
            e = ctypes.get_errno()
            if e in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise OSError(e, f"inotify_add_watch {path}: {os.strerror(e)}")
        self.paths[wd] = path
        return True

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Events since the last call; blocks up to ``timeout`` (None = forever) for the first.
        An empty list means timeout or ``wake()``. IN_Q_OVERFLOW yields an Event with mask set."""
        r, _, _ = select.select([self.fd, self._wake_r], [], [], timeout)
        if self._wake_r in r:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if self.fd not in r:
            return []
        return self._read()

    def _read(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off < len(buf):
                wd, mask, _cookie, length = _HEADER.unpack_from(buf, off)
                off += _HEADER.size
                name = buf[off : off + length].rstrip(b"\0").decode(errors="replace")
                off += length
                if mask & IN_IGNORED:
                    self.paths.pop(wd, None)  # the directory went away; the caller re-adds
                    continue
                out.append(Event(self.paths.get(wd, ""), name, mask))

    def close(self) -> None:
        for fd in (self.fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd = -1

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
