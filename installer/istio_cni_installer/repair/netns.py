"""Find a pod's network namespace from its IP by scanning ``/proc`` (host PID namespace).

Every process's ``ns/net`` is grouped by inode; for each namespace other than our own, the
local addresses are read from one member's ``net/fib_trie`` (IPv4) / ``net/if_inet6`` (IPv6),
which show that process's netns without entering it. The oldest process (the pod's pause
container) is preferred, as upstream does, since it lives as long as the sandbox.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable


def _start_time(proc_root: str, pid: str) -> int:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
        # Field 22 (starttime), counted after the ")" that ends the command name.
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 1 << 62


def namespaces(proc_root: str = "/proc") -> dict[int, str]:
    """netns inode -> pid of the oldest process in it (excluding our own netns)."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        own = -1
    best: dict[int, tuple[int, str]] = {}
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        try:
            ino = os.stat(f"{proc_root}/{pid}/ns/net").st_ino
        except OSError:  # exited meanwhile, or a kernel thread we may not inspect
            continue
        if ino == own:
            continue
        started = _start_time(proc_root, pid)
        if ino not in best or started < best[ino][0]:
            best[ino] = (started, pid)
    return {ino: pid for ino, (_, pid) in best.items()}


def local_v4(proc_root: str, pid: str) -> set[str]:
    """The IPv4 addresses local to pid's netns (``/32 host LOCAL`` leaves of fib_trie)."""
    out: set[str] = set()
    try:
        with open(f"{proc_root}/{pid}/net/fib_trie") as f:
            last = ""
            for line in f:
                s = line.strip()
                if s.startswith("|--"):
                    last = s[3:].strip()
                elif s == "/32 host LOCAL" and last:
                    out.add(last)
    except OSError:
        pass
    return out


def local_v6(proc_root: str, pid: str) -> set[str]:
    out: set[str] = set()
    try:
        with open(f"{proc_root}/{pid}/net/if_inet6") as f:
            for line in f:
                hexaddr = line.split(" ", 1)[0]
                if len(hexaddr) == 32:
                    out.add(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except OSError:
        pass
    return out


def find_netns(ips: Iterable[str], proc_root: str = "/proc") -> str:
    """``{proc_root}/<pid>/ns/net`` of the netns holding any of ``ips``; '' when none does."""
    wanted = {str(ipaddress.ip_address(ip)) for ip in ips}
    if not wanted:
        return ""
    v6 = any(":" in ip for ip in wanted)
    for _ino, pid in sorted(namespaces(proc_root).items()):
        have = local_v4(proc_root, pid)
        if v6:
            have |= local_v6(proc_root, pid)
        if have & wanted:
            return f"{proc_root}/{pid}/ns/net"
    return ""
