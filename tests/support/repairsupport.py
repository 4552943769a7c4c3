"""Helpers shared by the repair tests: polling with a bound, pod sandboxes found via /proc."""

from __future__ import annotations

import random
import subprocess
import time

import pytest

from istio_cni.tools import netns as nsutil
from istio_cni_installer.repair.netns import local_v4, namespaces

EVENTUALLY = 30.0


def eventually(cond, what: str, timeout: float = EVENTUALLY):
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ip_in_use(ip: str) -> bool:
    return any(ip in local_v4("/proc", pid) for pid in namespaces().values())


@pytest.fixture
def sandbox(netns):
    """Factory: a pod sandbox = netns with the pod IP on a link and a process inside
    (the repair finds netns through /proc, so a namespace needs a process, as pause is)."""
    procs = []

    def make() -> tuple[str, str]:
        name = netns("sbx")
        for _ in range(20):  # an IP no other netns on this shared machine holds right now
            # Documentation ranges, not link-local: a pod IP the plugin (as upstream) counts
            # when it reads the netns' addresses to decide on IPv6.
            ip = f"{random.choice(('198.51.100', '203.0.113'))}.{random.randint(2, 250)}"
            if not _ip_in_use(ip):
                break
        else:
            pytest.fail("no free 198.51.100.x / 203.0.113.x address for a sandbox (20 tries)")
        # No dummy module on this kernel: a veth pair with both ends inside the sandbox.
        nsutil.ip("-n", name, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
        nsutil.ip("-n", name, "addr", "add", f"{ip}/24", "dev", "pod0")
        nsutil.ip("-n", name, "link", "set", "pod0", "up")
        procs.append(subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"]))
        eventually(lambda: _ip_in_use(ip), "sandbox process")
        return name, ip

    yield make
    for p in procs:
        p.kill()
        p.wait(10)
