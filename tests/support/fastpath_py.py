"""Pure-Python twin of ``istio_cni._fastpath`` (the reference the compiled module is tested
against). Test-only, so it lives here and ships in neither the wheel nor the host bundle:
the plugin imports the compiled module and a build that lacks it is a failure. The netns
exception types are ``istio_cni.errors``', as in the compiled module. The twin uses
``os.setns`` (3.12+) or ``ctypes`` (3.11).
"""

from __future__ import annotations

import errno as _errno
import os

from istio_cni.errors import NetnsRestoreFailed, NotANetns

NSFS_MAGIC = 0x6E736673
PROC_SUPER_MAGIC = 0x9FA0
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes

    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _fs_magic(fd: int) -> int:
    import ctypes

    buf = ctypes.create_string_buffer(256)
    if _libc().fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int.from_bytes(buf.raw[:8], "little")


def _nstype(fd: int) -> int:
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return -1


def open_netns(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        magic = _fs_magic(fd)
        if magic not in (NSFS_MAGIC, PROC_SUPER_MAGIC):
            raise NotANetns(_errno.EINVAL, "not a network namespace (not on nsfs)", path)
        if _nstype(fd) != CLONE_NEWNET:
            raise NotANetns(_errno.EINVAL, "not a network namespace", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_fd(fd: int) -> None:
    os.close(fd)


def current_netns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def enter_fd(fd: int) -> None:
    _setns(fd)


def netns_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


class Entered:
    def __init__(self, path: str) -> None:
        self.path = path
        self._home = -1
        self._target = -1

    def __enter__(self) -> Entered:
        self._target = open_netns(self.path)
        try:
            self._home = current_netns()
            enter_fd(self._target)
        except BaseException:
            os.close(self._target)
            if self._home >= 0:
                os.close(self._home)
            self._home = self._target = -1
            raise
        return self

    def __exit__(self, *exc: object) -> bool:
        try:
            _setns(self._home)
        except OSError as e:
            raise NetnsRestoreFailed(f"could not return from netns {self.path}: {e.strerror}") from None
        finally:
            os.close(self._home)
            os.close(self._target)
            self._home = self._target = -1
        return False


def parse_cni_args(raw: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not raw:
        return out
    for pair in raw.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            shown = pair if len(pair) <= 80 else pair[:80] + "..."
            raise ValueError(f"CNI_ARGS: invalid pair {shown!r} (want KEY=VALUE)")
        out.append((kv[0], kv[1]))
    return out


# JSON: the same contract as the compiled module (its section comment), through the
# ``json`` package instead of driving ``_json`` directly.
MAX_DEPTH = 512


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text):
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError("number out of the double range")
    return v


def _bad_str(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value, depth=1):
    """Yield (depth, str) for every string (keys too) and (depth, None) per container."""
    if isinstance(value, str):
        yield depth, value
    elif isinstance(value, dict):
        yield depth, None
        for k, v in value.items():
            yield depth, k
            yield from _walk(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        yield depth, None
        for v in value:
            yield from _walk(v, depth + 1)


def json_loads(data):
    import json

    if isinstance(data, str):
        text = data
        if _bad_str(text):
            raise ValueError("lone surrogate in JSON text")
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
    if text.startswith("\ufeff"):
        raise ValueError("byte-order mark before the JSON document")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"JSON nesting deeper than {MAX_DEPTH}") from None
    try:
        for depth, s in _walk(value):
            if s is None and depth > MAX_DEPTH:
                raise ValueError(f"JSON nesting deeper than {MAX_DEPTH}")
            if s is not None and _bad_str(s):
                raise ValueError("lone surrogate escape in a JSON string")
    except RecursionError:
        raise ValueError(f"JSON nesting deeper than {MAX_DEPTH}") from None
    return value


def json_dumps(obj) -> str:
    import json

    try:
        out = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("nesting too deep to encode as JSON") from None
    if "\\ud" in out and any(isinstance(s, str) and _bad_str(s) for _, s in _walk(obj)):
        raise ValueError("a string holds a surrogate code point (invalid Unicode), not encodable as JSON")
    return out


def json_quote(s: str) -> str:
    import json

    return json.dumps(s)


PADDED_B64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"


def b64decode(s: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString`` (what client-go uses for ``*-data``): padded
    RFC 4648 base64 only, trailing bits ignored. (``binascii``'s strict mode is not it: it
    accepts ``"0000="``.)"""
    import binascii
    import re

    if not re.fullmatch(PADDED_B64, s, flags=re.ASCII):
        raise ValueError("base64: not padded standard base64")
    return binascii.a2b_base64(s)
