"""``support.emulator.require_syscall``: skips only under the named emulator AND on ENOSYS."""

from __future__ import annotations

import errno

import pytest
from support import emulator


def _raising(code):
    def probe():
        raise OSError(code, "probe")
    return probe


def test_no_emulator_never_skips(monkeypatch):
    monkeypatch.delenv(emulator.EMULATOR_ENV, raising=False)
    monkeypatch.setitem(emulator.PROBES, "probe()", _raising(errno.ENOSYS))
    emulator.require_syscall("probe()")  # natively a missing syscall is a failure, not a skip


def test_emulator_and_enosys_skip_naming_both(monkeypatch):
    monkeypatch.setenv(emulator.EMULATOR_ENV, "qemu-aarch64 7.2")
    monkeypatch.setitem(emulator.PROBES, "probe()", _raising(errno.ENOSYS))
    with pytest.raises(pytest.skip.Exception, match=r"probe\(\) .*qemu-aarch64 7\.2 \(ENOSYS\)"):
        emulator.require_syscall("probe()")


@pytest.mark.parametrize("probe", [_raising(errno.EPERM), lambda: None])
def test_emulator_with_a_working_or_other_failing_syscall_runs(monkeypatch, probe):
    monkeypatch.setenv(emulator.EMULATOR_ENV, "qemu-aarch64 7.2")
    monkeypatch.setitem(emulator.PROBES, "probe()", probe)
    emulator.require_syscall("probe()")


def test_real_probe():
    emulator.require_syscall("ioctl(NS_GET_NSTYPE)")  # skipped, and named, under qemu 7.2
    emulator.PROBES["ioctl(NS_GET_NSTYPE)"]()  # the kernel implements it
