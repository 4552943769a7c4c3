"""Whether a pod's traffic must go through its sidecar: the exclusion ladder.

Pure: pod JSON in, ``Skip(reason)`` or ``REDIRECT`` out. The order is today's upstream
(``cni/pkg/plugin/sidecar_redirect``/``plugin.go``, report §3.2); the first rung that
matches wins and is logged by the caller as one line.
"""

from __future__ import annotations

from .value import Value

INIT_CONTAINER = "istio-init"
PROXY_CONTAINER = "istio-proxy"
INJECT_KEY = "sidecar.istio.io/inject"
STATUS_KEY = "sidecar.istio.io/status"


class Skip(Value):
    """No redirection for this pod; ``reason`` is a short machine-friendly phrase."""

    __slots__ = ("reason",)


REDIRECT = "redirect"

_FALSE = ("false", "f", "0", "no", "n", "off")
_TRUE = ("true", "t", "1", "yes", "y", "on")


def _parse_bool(v: str):
    low = v.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def proxy_container(pod: dict) -> dict | None:
    """The istio-proxy container, among containers or init containers (native sidecar)."""
    spec = pod.get("spec") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if c.get("name") == PROXY_CONTAINER:
            return c
    return None


def _env(container: dict, name: str) -> str | None:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value") or ""
    return None


def _proxy_type(container: dict) -> str:
    """``proxy sidecar ...`` / ``proxy router ...``: the word after ``proxy`` in the args."""
    args = container.get("args") or []
    for i, a in enumerate(args):
        if a == "proxy" and i + 1 < len(args):
            return args[i + 1]
    return "sidecar"


def decide(pod: dict):
    """``REDIRECT`` or ``Skip(reason)`` for ``pod`` (the API's Pod object as a dict)."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    if any(c.get("name") == INIT_CONTAINER for c in spec.get("initContainers") or []):
        return Skip("pod has the istio-init init container (init-container redirection in use)")
    proxy = proxy_container(pod)
    if proxy is not None and (_parse_bool(_env(proxy, "DISABLE_ENVOY") or "") is True):
        return Skip("istio-proxy has DISABLE_ENVOY=true")
    if proxy is None:
        return Skip("pod has no istio-proxy container")
    ptype = _proxy_type(proxy)
    if ptype != "sidecar":
        return Skip(f"istio-proxy runs as {ptype!r}, not a sidecar")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    inject = labels.get(INJECT_KEY)
    source = "label"
    if inject is None:
        inject, source = annotations.get(INJECT_KEY), "annotation"
    if inject is not None and _parse_bool(inject) is False:
        return Skip(f"injection disabled by {INJECT_KEY} {source}")
    if STATUS_KEY not in annotations:
        return Skip(f"pod has no {STATUS_KEY} annotation (sidecar not injected)")
    return REDIRECT
