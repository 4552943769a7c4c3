"""Skips for syscalls a user-mode emulator does not implement (the aarch64 wheel's tests).

`make wheel` runs the aarch64 wheel's unit tier under qemu-user and sets
``ISTIO_CNI_TEST_EMULATOR`` (e.g. ``qemu-aarch64 1:7.2+dfsg-7+deb12u18+b3``) for it. A test
that needs such a syscall calls ``require_syscall`` first: it skips only when that variable
is set AND the syscall really answers ENOSYS, and the reason names both. Natively (the
variable unset) nothing is ever skipped, and an emulator that does implement the syscall
runs the test.
"""

from __future__ import annotations

import errno
import os

import pytest

EMULATOR_ENV = "ISTIO_CNI_TEST_EMULATOR"
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h


def _ns_get_nstype() -> None:
    import fcntl

    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, NS_GET_NSTYPE)
    finally:
        os.close(fd)


PROBES = {"ioctl(NS_GET_NSTYPE)": _ns_get_nstype}


def require_syscall(name: str) -> None:
    """Skip the calling test when running under the emulator named by ``ISTIO_CNI_TEST_EMULATOR``
    and the syscall ``name`` (a key of ``PROBES``) fails there with ENOSYS."""
    emulator = os.environ.get(EMULATOR_ENV)
    if not emulator:
        return
    try:
        PROBES[name]()
    except OSError as e:
        if e.errno == errno.ENOSYS:
            pytest.skip(f"{name} is not implemented by the emulator {emulator} (ENOSYS)")
