"""Helpers for agent/repair tests on the real control plane (etcd + kube-apiserver, contract 4).

The control plane is shared by the whole session, so every test uses its own namespace and
its own node name (the agent's field selector then sees only that test's pods). There is no
kubelet: pod status (IPs, init container exits) is written through ``pods/status`` as a
kubelet would.
"""

from __future__ import annotations

import copy
import uuid


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def manifest(pod: dict, namespace: str, node: str) -> dict:
    """A pod from tests/support/injected_pods.py as a create request: server-owned fields removed."""
    pod = copy.deepcopy(pod)
    meta = pod["metadata"]
    for k in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        meta.pop(k, None)
    meta["namespace"] = namespace
    pod["spec"]["nodeName"] = node
    pod.pop("status", None)
    return pod


def set_status(cp, namespace: str, name: str, status: dict) -> dict:
    """Merge-patch ``status`` through the pods/status subresource (what kubelet owns)."""
    return cp.api.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status},
                       content_type="application/merge-patch+json")


def events_for(cp, namespace: str, name: str) -> list:
    doc = cp.api.call("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}")
    return doc.get("items") or []
