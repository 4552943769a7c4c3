"""The compiled module's netns switch (and its pure-Python twin's) in a real network namespace:
the part of tests/unit/test_fastpath.py that needs root."""

from __future__ import annotations

import os

import pytest
from support import fastpath_py as _fastpath_py
from support.emulator import require_syscall

from istio_cni import _fastpath


@pytest.fixture(params=["c", "py"])
def fp(request):
    return _fastpath if request.param == "c" else _fastpath_py


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a netns")
def test_entered_switches_and_restores(fp, netns):
    require_syscall("ioctl(NS_GET_NSTYPE)")
    name = netns("fp")
    home = os.stat("/proc/thread-self/ns/net").st_ino
    target = os.stat(f"/run/netns/{name}").st_ino
    with fp.Entered(f"/run/netns/{name}"):
        assert os.stat("/proc/thread-self/ns/net").st_ino == target
    assert os.stat("/proc/thread-self/ns/net").st_ino == home


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a netns")
def test_entered_restores_on_error(fp, netns):
    require_syscall("ioctl(NS_GET_NSTYPE)")
    name = netns("fp")
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(ZeroDivisionError):
        with fp.Entered(f"/run/netns/{name}"):
            raise ZeroDivisionError("raised inside the netns")
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
