"""``istio-iptables --run-validation``: prove the redirect is in place before the app starts.

Upstream's ``istio-validation`` init container runs this when the CNI plugin (not an init
container) programs the rules: if the pod started before the plugin was on the node, the
rules are missing, the probe never arrives, and the container exits 126 so the pod
crash-loops visibly instead of running without its sidecar.

How it works (same as upstream): listen on 127.0.0.1 (``::1`` for IPv6 pods) at the proxy's
outbound and inbound capture ports, and as the proxy user dial ``127.0.0.6:<probe port>``
(``::6``) once a second. ``ISTIO_OUTPUT`` sends proxy-owned traffic to a non-loopback
address over ``lo`` to the inbound capture port, so with the rules in place the dial lands
on our listener, whose ``SO_ORIGINAL_DST`` is the probe address.
"""

from __future__ import annotations

import select
import socket
import struct
import time

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
VALIDATION_ERROR_CODE = 126
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` for the forms flags use: ``5s``, ``500ms``, ``1m30s``."""
    rest, total = text.strip(), 0.0
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError("empty duration")
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        number, rest = rest[:i], rest[i:]
        j = 0
        while j < len(rest) and not (rest[j].isdigit() or rest[j] == "."):
            j += 1
        unit, rest = rest[:j], rest[j:]
        if not number or unit not in _UNITS:
            raise ValueError(f"invalid duration {text!r} (use e.g. 5s, 500ms, 1m30s)")
        total += float(number) * _UNITS[unit]
    return total


def _original_port(conn: socket.socket, ipv6: bool) -> int:
    if ipv6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    else:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return struct.unpack_from("!H", raw, 2)[0]


def _listeners(host: str, ports: tuple, family: int) -> list:
    out = []
    for port in dict.fromkeys(ports):  # proxy and capture port may coincide
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(16)
            sock.setblocking(False)
            out.append(sock)
        except OSError:
            sock.close()  # upstream also carries on with whichever listener it could open
    return out


def _probe(local: str, target: tuple, family: int, budget: float) -> None:
    """One dial of the probe address; failures are expected until the rules exist."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(max(budget, 0.05))
        try:
            client.bind((local, 0))
            client.connect(target)
        except OSError:
            pass


def validate(proxy_port: str, capture_port: str, probe_port: int, ipv6: bool,
             timeout: float, interval: float = 1.0) -> bool:
    """True once a probe dial arrives redirected; False when ``timeout`` passes first."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    local = "::1" if ipv6 else "127.0.0.1"
    target = ("::6" if ipv6 else "127.0.0.6", probe_port)
    listeners = _listeners(local, (proxy_port, capture_port), family)
    if not listeners:
        raise OSError(f"no listener available on {local} ports {proxy_port},{capture_port}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            _probe(local, target, family, min(interval, deadline - now))
            wait_until = min(time.monotonic() + interval, deadline)
            while (left := wait_until - time.monotonic()) > 0:
                ready, _, _ = select.select(listeners, [], [], left)
                for lsock in ready:
                    try:
                        conn, _peer = lsock.accept()
                    except BlockingIOError:
                        continue
                    with conn:
                        try:
                            port = _original_port(conn, ipv6)
                        except OSError:
                            continue  # not redirected: someone dialled the port directly
                        conn.sendall(str(port).encode())  # echo, as upstream does
                    if port == probe_port:
                        return True
    finally:
        for lsock in listeners:
            lsock.close()


FAILURE_MESSAGE = """iptables validation failed; workload is not ready for Istio.
When using Istio CNI, this can occur if a pod is scheduled before the node is ready.

If installed with 'cni.repair.deletePods=true', this pod should automatically be deleted and retry.
Otherwise, this pod will need to be manually removed so that it is scheduled on a node with istio-cni running, allowing iptables rules to be established.
"""
