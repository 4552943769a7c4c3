"""Locate the Go programs built by tools/go-tools.sh (the suite's real peers).

A missing tool FAILS the test that needs it, naming the build step that failed and the log to
read; it is never a silent skip, because a peer that quietly stops running is a peer that stops
catching bugs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("ISTIO_CNI_TOOLS_CACHE", Path.home() / ".cache" / "istio-cni-tools"))
REPO = Path(__file__).resolve().parents[2]
KNOWN = ("istio-iptables", "helm", "cnitool", "portmap", "kube-apiserver", "istio-cni",
         # the node tier (tests/node): kubelet and the controllers beside kube-apiserver, and crictl
         "kube-controller-manager", "kube-scheduler", "kubelet", "crictl",
         # the chart's docs generators (charts/istio-cni/hack/gen-docs.sh)
         "helm-docs", "helm-values-schema-json")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def build_failure(name: str) -> str | None:
    """Why tool ``name`` is not usable, or None when its binary is in place."""
    if name not in KNOWN:
        raise ValueError(f"unknown tool {name!r}; tools/go-tools.sh builds {', '.join(KNOWN)}")
    link = CACHE / "bin" / name
    status = (_read(CACHE / f"{name}.status") or "").split()
    log = CACHE / f"{name}.build.log"
    if link.exists() and os.access(link, os.X_OK) and status[:1] == ["ok"]:
        return None
    if not status:
        return (f"{name} was never built: run `make setup` (or `tools/go-tools.sh {name}`); "
                f"expected {link}")
    if status[0] == "failed":
        step = status[1] if len(status) > 1 else "?"
        version = status[2] if len(status) > 2 else "?"
        tail = "".join((_read(log) or "").splitlines(keepends=True)[-15:])
        return (f"{name} {version}: tools/go-tools.sh FAILED at step '{step}'; log {log}:\n{tail}")
    return f"{name}: status says {' '.join(status)!r} but {link} is missing or not executable"


def tool_path(name: str) -> Path:
    """Path of the built tool; fails the calling test with the recorded build failure."""
    why = build_failure(name)
    if why:
        pytest.fail(why, pytrace=False)
    return (CACHE / "bin" / name).resolve()


def tool_version(name: str) -> str:
    """The version tools/go-tools.sh recorded for a successfully built tool."""
    tool_path(name)
    return (CACHE / f"{name}.status").read_text().split()[1]
