"""``istio-cni validate``: the probe the ``istio-validation`` init container runs.

Proves, from inside the pod, that the CNI plugin's redirect rules are in place (upstream
``istio-iptables --run-validation``, research report §4.6): listen on the proxy ports
(127.0.0.1:15001 outbound, :15006 inbound), then, as the proxy UID, connect to
127.0.0.6:15002. Only the rule "proxy traffic over lo to a non-loopback-1 address ->
inbound capture" can land that connection on our inbound listener; the accepted socket's
``SO_ORIGINAL_DST`` must then be the probe address. Success exits 0; no redirect before the
deadline exits 126, which the repair controller recognises.

Runs once per pod start, never on the plugin's ADD path; ``argparse`` is fine here.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse  # at run time imported where the parser is built

FAILURE_EXIT = 126
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
HINT = (
    "the istio-cni plugin did not set up traffic redirection for this pod (it probably started "
    "before the plugin was installed on the node). The istio-cni node agent's repair controller "
    "fixes such pods (REPAIR_MODE=repair|label|delete); or delete the pod so it is recreated."
)


def original_dst(conn: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before NAT redirected it (IPv4 or IPv6)."""
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class Listeners:
    """Accepts on the proxy ports; records the original destination of every connection."""

    def __init__(self, host: str, ports: tuple[int, ...]) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sel = selectors.DefaultSelector()
        self.socks = []
        for port in ports:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise SystemExit(f"istio-cni validate: cannot listen on {host}:{port}: {e.strerror}") from None
            s.listen(16)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, port)
            self.socks.append(s)
        self.seen: list[tuple[int, tuple[str, int]]] = []  # (listener port, original dst)
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.05):
                listener = key.fileobj
                assert isinstance(listener, socket.socket)  # only listening sockets are registered
                try:
                    conn, _peer = listener.accept()
                except BlockingIOError:
                    continue
                with conn:
                    try:
                        dst = original_dst(conn)
                    except OSError:  # not NATed: a direct connection to our port
                        dst = conn.getsockname()[:2]
                with self.changed:
                    self.seen.append((key.data, dst))
                    self.changed.notify_all()

    def wait_for(self, dst: tuple[str, int], timeout: float) -> int | None:
        """The listener port that received a connection originally meant for ``dst``, or None."""
        end = time.monotonic() + timeout
        with self.changed:
            while True:
                for port, orig in self.seen:
                    if orig == dst:
                        return port
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        for s in self.socks:
            s.close()


def drop_privileges(uid: int, gid: int) -> None:
    """Become the proxy UID/GID (the owner rules match on them); no-op when already them."""
    if os.geteuid() == uid and os.getegid() == gid:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"istio-cni validate: running as uid {os.geteuid()}, cannot switch to the "
            f"proxy uid {uid}; run the container as uid {uid} (or as root)"
        )
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def probe(listeners: Listeners, dst: tuple[str, int], deadline: float, interval: float) -> str:
    """Dial ``dst`` until a connection lands on a listener; '' on success, else the last cause."""
    fam = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
    cause = "no attempt made"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return cause
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as c:
                c.settimeout(min(left, 1.0))
                c.connect(dst)
                port = listeners.wait_for(dst, min(max(deadline - time.monotonic(), 0), 1.0))
        except OSError as e:
            cause = f"connect {dst[0]}:{dst[1]}: {e.strerror or e}"
        else:
            if port is not None:
                return ""
            cause = f"connected to {dst[0]}:{dst[1]} but the connection never reached a proxy port"
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))


def build_parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="istio-cni validate",
        description="Check that this pod's traffic is redirected to the sidecar ports (run by the "
        "istio-validation init container). Exit 0 when redirection works, 126 when it does not.",
    )
    p.add_argument("-p", "--outbound-port", type=int, default=15001, help="outbound capture port (15001)")
    p.add_argument("-z", "--inbound-port", type=int, default=15006, help="inbound capture port (15006)")
    p.add_argument("-u", "--proxy-uid", type=int, default=1337, help="uid the proxy runs as (1337)")
    p.add_argument("-g", "--proxy-gid", type=int, default=None, help="gid the proxy runs as (= uid)")
    p.add_argument("--probe-address", default="", help="address to dial (127.0.0.6, or ::6 with --ipv6)")
    p.add_argument("--probe-port", type=int, default=15002, help="port to dial (15002)")
    p.add_argument("--ipv6", action="store_true", help="validate the IPv6 rules (listen on ::1)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before giving up (5)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between attempts (0.2)")
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    for name in ("outbound_port", "inbound_port", "probe_port"):
        if not 1 <= getattr(a, name) <= 65535:
            raise SystemExit(
                f"istio-cni validate: --{name.replace('_', '-')} {getattr(a, name)} is not a port number (1-65535)"
            )
    if a.timeout <= 0 or a.interval <= 0:
        raise SystemExit("istio-cni validate: --timeout and --interval must be positive")
    host = "::1" if a.ipv6 else "127.0.0.1"
    dst = (a.probe_address or ("::6" if a.ipv6 else "127.0.0.6"), a.probe_port)
    listeners = Listeners(host, (a.outbound_port, a.inbound_port))
    try:
        drop_privileges(a.proxy_uid, a.proxy_uid if a.proxy_gid is None else a.proxy_gid)
        cause = probe(listeners, dst, time.monotonic() + a.timeout, a.interval)
    finally:
        listeners.close()
    if not cause:
        sys.stderr.write(
            f"istio-cni validate: ok, a connection to {dst[0]}:{dst[1]} as uid "
            f"{a.proxy_uid} was redirected to the proxy\n"
        )
        return 0
    sys.stderr.write(f"istio-cni validate: FAILED after {a.timeout:g} s ({cause}): {HINT}\n")
    return FAILURE_EXIT
