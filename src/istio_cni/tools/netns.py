"""Named network namespaces for tests and the demo: unique names, always deleted.

Everything here runs ``ip`` against namespaces this module created; the host's own
network namespace is never modified. Addresses are only ever assigned inside them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_counter = itertools.count()
PREFIX = "icni"


def unique_name(tag: str = "ns") -> str:
    return f"{PREFIX}-{tag}-{os.getpid()}-{next(_counter)}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def add(name: str) -> str:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    return f"/run/netns/{name}"


def delete(name: str) -> None:
    ip("netns", "del", name, check=False)


def path(name: str) -> str:
    return f"/run/netns/{name}"


def exec_in(name: str, *cmd: str, **kw: Any) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", name, *cmd], **kw)


@contextmanager
def temporary(tag: str = "ns") -> Iterator[str]:
    """Yield a fresh named netns; delete it whatever happens."""
    name = unique_name(tag)
    add(name)
    try:
        yield name
    finally:
        delete(name)


def veth_pair(ns_a: str, ns_b: str, addr_a: str, addr_b: str, tag: str = "v") -> tuple[str, str]:
    """Wire two namespaces with a veth pair and give each end an address (CIDR form).

    The pair is created directly inside ``ns_a`` so nothing ever appears in the host netns.
    """
    n = next(_counter)
    a, b = f"{tag}a{os.getpid() % 10000}{n}"[:15], f"{tag}b{os.getpid() % 10000}{n}"[:15]
    ip("-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
        fam = ["-6"] if ":" in addr else []
        ip("-n", ns, *fam, "addr", "add", addr, "dev", dev, *(["nodad"] if fam else []))
        ip("-n", ns, "link", "set", dev, "up")
    return a, b
