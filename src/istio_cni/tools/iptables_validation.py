"""``istio-iptables --run-validation``: prove the redirect is in place before the app starts.

Upstream's ``istio-validation`` init container runs this when the CNI plugin (not an init
container) programs the rules: if the pod started before the plugin was on the node, the
rules are missing, the probe never arrives, and the container exits 126 so the pod
crash-loops visibly instead of running without its sidecar.

How it works (same as upstream): listen on 127.0.0.1 (``::1`` for IPv6 pods) at the proxy's
outbound and inbound capture ports, and as the proxy user dial ``127.0.0.6:<probe port>``
(``::6``) once a second (the listeners and probe loop are shared with ``istio-cni validate``).
``ISTIO_OUTPUT`` sends proxy-owned traffic to a non-loopback address over ``lo`` to the
inbound capture port, so with the rules in place the dial lands on our listener, whose
``SO_ORIGINAL_DST`` is the probe address.
"""

from __future__ import annotations

import time

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


def validate(
    proxy_port: str, capture_port: str, probe_port: int, ipv6: bool, timeout: float, interval: float = 1.0
) -> bool:
    """True once a probe dial arrives redirected; False when ``timeout`` passes first.

    The listeners and the probe loop are ``istio-cni validate``'s (``validate.py``); this
    wrapper only maps ``istio-iptables``' flags onto them. The caller already runs as the
    proxy user, as upstream's init container does.
    """
    from .validate import Listeners, probe

    host = "::1" if ipv6 else "127.0.0.1"
    dst = ("::6" if ipv6 else "127.0.0.6", probe_port)
    ports = tuple(dict.fromkeys(int(p) for p in (proxy_port, capture_port)))  # may coincide
    listeners = Listeners(host, ports)
    try:
        return probe(listeners, dst, time.monotonic() + timeout, interval) == ""
    finally:
        listeners.close()


FAILURE_MESSAGE = """iptables validation failed; workload is not ready for Istio.
When using Istio CNI, this can occur if a pod is scheduled before the node is ready.

If installed with 'cni.repair.deletePods=true', this pod should automatically be deleted and retry.
Otherwise, this pod will need to be manually removed so that it is scheduled on a node with istio-cni running, allowing iptables rules to be established.
"""  # noqa: E501  (upstream's message, verbatim)
