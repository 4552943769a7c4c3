"""Whether a pod's traffic must go through its sidecar: the exclusion ladder.

Pure: pod JSON in, ``Skip(reason)`` or ``REDIRECT`` out. The rungs, their order and their
parsing are upstream's (``cni/pkg/plugin/plugin.go`` doAddRun and ``kubernetes.go``
ExtractPodInfo); the first rung that matches wins and is logged by the caller as one line:

1. a container named ``istio-init``, init *or* regular (upstream collects every name);
2. the proxy's ``DISABLE_ENVOY`` parses (Go ``strconv.ParseBool``) as true; a value that
   does not parse is ignored, as upstream ignores the parse error;
3. no container (init or regular) named ``istio-proxy``;
4. the proxy type: ``args[1]`` when ``args[0] == "proxy"``, skipped unless empty or ``sidecar``;
5. ``sidecar.istio.io/inject`` (the label wins over the annotation when present, even
   empty) parses as false; empty or unparsable means "no opinion";
6. no ``sidecar.istio.io/status`` annotation.
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
    reason: str


REDIRECT = "redirect"

# Go's strconv.ParseBool accepts exactly these spellings; anything else is a parse error.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_go_bool(text: object) -> bool | None:
    """``strconv.ParseBool``: True/False, or None where Go returns an error."""
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    return None


def _containers(pod: dict) -> list:
    """Init containers, then regular ones (upstream's order), dict entries only."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return []
    out = []
    for group in ("initContainers", "containers"):
        items = spec.get(group)
        if isinstance(items, list):
            out += [c for c in items if isinstance(c, dict)]
    return out


def proxy_env(pod: dict) -> dict:
    """The ``istio-proxy`` container's env as upstream reads it: every entry's ``value``
    (empty for a ``valueFrom`` entry), a later entry with the same name winning."""
    env: dict = {}
    for c in _containers(pod):
        if c.get("name") != PROXY_CONTAINER or not isinstance(c.get("env"), list):
            continue
        for e in c["env"]:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                value = e.get("value")
                env[e["name"]] = value if isinstance(value, str) else ""
    return env


def proxy_container(pod: dict) -> dict | None:
    """The istio-proxy container, among init containers (native sidecar) or containers."""
    for c in _containers(pod):
        if c.get("name") == PROXY_CONTAINER:
            return c
    return None


def proxy_type(container: dict) -> str | None:
    """``args[1]`` when ``args[0] == "proxy"`` (``proxy sidecar ...``), else None."""
    args = container.get("args")
    if isinstance(args, list) and len(args) >= 2 and args[0] == "proxy" and isinstance(args[1], str):
        return args[1]
    return None


def _strings(obj: object) -> dict:
    return obj if isinstance(obj, dict) else {}


def decide(pod: dict) -> Skip | str:
    """``REDIRECT`` or ``Skip(reason)`` for ``pod`` (the API's Pod object as a dict)."""
    if not isinstance(pod, dict):
        pod = {}
    names = {c.get("name") for c in _containers(pod)}
    if INIT_CONTAINER in names:
        return Skip("pod has an istio-init container (init-container redirection in use)")
    env = proxy_env(pod)
    if "DISABLE_ENVOY" in env and parse_go_bool(env["DISABLE_ENVOY"]) is True:
        return Skip("istio-proxy has DISABLE_ENVOY=true")
    if PROXY_CONTAINER not in names:
        return Skip("pod has no istio-proxy container")
    ptype = ""
    for c in _containers(pod):  # upstream: the last istio-proxy whose args say "proxy X"
        this = proxy_type(c) if c.get("name") == PROXY_CONTAINER else None
        if this is not None:
            ptype = this
    if ptype not in ("", "sidecar"):
        return Skip(f"istio-proxy runs as {ptype!r}, not a sidecar")
    meta = _strings(pod.get("metadata"))
    labels, annotations = _strings(meta.get("labels")), _strings(meta.get("annotations"))
    inject, source = annotations.get(INJECT_KEY, ""), "annotation"
    if INJECT_KEY in labels:  # the label is the newer API and wins, even when empty
        inject, source = labels[INJECT_KEY], "label"
    if inject != "" and parse_go_bool(inject) is False:
        return Skip(f"injection disabled by {INJECT_KEY} {source}")
    if STATUS_KEY not in annotations:
        return Skip(f"pod has no {STATUS_KEY} annotation (sidecar not injected)")
    return REDIRECT
