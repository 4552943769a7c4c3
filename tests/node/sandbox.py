"""The private network + mount namespace a test node lives in, and the guard that proves the
machine's own namespaces were left as they were.

A *holder* process (``unshare --net --mount``) owns both namespaces: it gives them a fresh sysfs
(so /sys/class/net shows the node's links) with the host's cgroup mounts moved back under it
(runc and kubelet find their hierarchies), tmpfs over /var/lib and /var/log (kubelet's fixed
paths), plain files bound over the host-wide sysctls kubelet writes, makes ``/`` rshared (the
chart's ``HostToContainer`` netns mount needs a shared mount, as on any systemd host) and then
sleeps. Every node daemon is started with ``nsenter -t <holder> -m -n``: one mount namespace,
so kubelet's secret/projected-token tmpfs mounts are seen by containerd. Nothing here runs in the
machine's own namespaces except reads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

# Written by kubelet's container manager (setupKernelTunables); global, not per netns, so each is
# a plain file inside the node's mount namespace.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# Read before and after the tier: the ones above plus host network knobs a node could flip.
GUARDED_SYSCTLS = KUBELET_SYSCTLS + ("net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding",
                                     "net/ipv4/conf/all/route_localnet", "net/ipv6/conf/all/forwarding")
PR_SET_PDEATHSIG = 1
HOLDER_LIFETIME = 3 * 3600  # the holder sleeps at most this long, even if nobody stops it
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the test process dies (no orphaned node daemons)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _run(argv: list[str], timeout: float = 30) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True).stdout


class HostState:
    """What the tier must leave unchanged in the machine's own namespaces."""

    def __init__(self, parts: dict[str, str]) -> None:
        self.parts = parts

    @classmethod
    def capture(cls) -> HostState:
        parts = {
            "links": _run(["ip", "-o", "link", "show"]),
            "addresses": _run(["ip", "-o", "addr", "show"]),
            "routes": _run(["ip", "route", "show", "table", "all"])
            + _run(["ip", "-6", "route", "show", "table", "all"]),
            "rules": _run(["ip", "rule"]) + _run(["ip", "-6", "rule"]),
            "mounts": _mount_table(),
            "sysctls": "".join(f"{s} = {_read(Path('/proc/sys') / s)}\n" for s in GUARDED_SYSCTLS),
            "/run entries": "\n".join(sorted(os.listdir("/run"))) + "\n",
        }
        return cls(parts)

    def diff(self, later: HostState) -> str:
        import difflib

        out = []
        for key, before in self.parts.items():
            after = later.parts[key]
            if before != after:
                out.append(f"--- host {key} changed:\n" + "".join(difflib.unified_diff(
                    before.splitlines(True), after.splitlines(True), "before", "after", n=0)))
        return "\n".join(out)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        return f"<{e.strerror}>"


def _mount_table() -> str:
    """The host mount table as (mount point, fs type, source, options), sorted.

    Named network namespaces (nsfs under /run/netns) are left out: other tiers of the same suite
    (and, on a shared machine, other test runs) add and delete those; this tier creates none.
    """
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if r[0] == "nsfs" and f[4].startswith("/run/netns/"):
            continue
        rows.append(f"{f[4]} {r[0]} {r[1]} {f[5]} {' '.join(f[6:])}")
    return "\n".join(sorted(rows)) + "\n"


class Holder:
    """Owner of the node's network + mount namespace; ``prefix()`` enters both."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> Holder:
        d = self.dir / "holder"
        (d / "cgroup-stash").mkdir(parents=True, exist_ok=True)
        (d / "sysctl").mkdir(exist_ok=True)
        ready = d / "ready"
        binds = []
        for s in KUBELET_SYSCTLS:
            fake = d / "sysctl" / s.replace("/", ".")
            fake.write_text(_read(Path("/proc/sys") / s) + "\n")
            binds.append(f"mount --bind {fake} /proc/sys/{s}")
        script = "\n".join([
            "set -eu",
            f"mount --rbind /sys/fs/cgroup {d}/cgroup-stash",
            "umount -l /sys",  # this namespace only: the host's /sys is untouched
            "mount -t sysfs sysfs /sys",
            f"mount --move {d}/cgroup-stash /sys/fs/cgroup",
            "mount -t tmpfs -o mode=755 node-var-lib /var/lib",
            "mount -t tmpfs -o mode=755 node-var-log /var/log",
            # containerd's shim sockets (/run/containerd/s) and runc's state (/run/runc) are fixed
            # paths: a private /run keeps them off the machine's /run.
            "mount -t tmpfs -o mode=755 node-run /run",
            *binds,
            "ip link set lo up",
            "mount --make-rshared /",
            f"touch {ready}",
            f"exec sleep {HOLDER_LIFETIME}",
        ])
        log = open(d / "holder.log", "wb")
        try:
            self.proc = subprocess.Popen(
                ["unshare", "--net", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"namespace holder exited {self.proc.returncode}: "
                                   f"{(d / 'holder.log').read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace holder not ready after {timeout}s")
            time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "--"]

    def run(self, *argv: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a command inside the node (its network and mount namespace)."""
        proc = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"in node: {' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc

    def members(self) -> list[int]:
        """PIDs of every process in the node's mount namespace but the holder: all started by this
        tier (directly, or by its containerd: shims, containers)."""
        try:
            mine = os.readlink(f"/proc/{self.pid}/ns/mnt")
        except OSError:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == mine:
                    out.append(int(entry))
            except OSError:
                continue
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def netns_connection(holder_pid: int, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection opened from inside the node's network namespace.

    A socket belongs to the netns it was created in; a short-lived thread enters the node's netns
    (setns is per thread), creates and connects the socket, and exits. The test process itself
    never leaves the machine's namespace.
    """
    result: dict = {}

    def work() -> None:
        try:
            fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY)
            try:
                if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns into the node's netns")
            finally:
                os.close(fd)
            result["sock"] = socket.create_connection(address, timeout=timeout)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=work, name="node-netns-connect", daemon=True)
    t.start()
    t.join(timeout + 5)
    if "error" in result:
        raise result["error"]
    if "sock" not in result:
        raise TimeoutError(f"connect {address} in the node netns did not finish")
    return result["sock"]
