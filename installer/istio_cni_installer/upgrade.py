"""On SIGTERM: uninstall, or keep the plugin because this is only an upgrade/restart?

If our DaemonSet still exists, is not being deleted and still targets this node, a new
installer pod is coming: removing the plugin now would let pods created in between start
without redirection (upstream's most common complaint). So we keep plugin and config in place
and those pods wait. Uninstall when the DaemonSet is gone (404), being deleted, our access to
it was revoked (403, the chart removed its RBAC) or it no longer selects this node.
When the API cannot be reached at all we keep everything: failing closed is recoverable,
pods started unmeshed are not.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path

from istio_cni.log import log

from .nodematch import mismatch


class ApiError(Exception):
    pass


class ApiClient:
    """Minimal GET-only Kubernetes client (service-account token + CA); never logs the token."""

    def __init__(self, server: str, token: str, ca_file: str | None = None,
                 skip_tls_verify: bool = False, timeout: float = 3.0) -> None:
        u = urllib.parse.urlsplit(server)
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.token, self.timeout = token, timeout
        self.ctx = None
        if self.scheme == "https":
            self.ctx = ssl.create_default_context(cafile=ca_file) if not skip_tls_verify else \
                ssl._create_unverified_context()

    @classmethod
    def from_settings(cls, s, timeout: float = 3.0) -> "ApiClient | None":
        sa = Path(s.service_account_dir)
        try:
            token = (sa / "token").read_text().strip()
        except OSError:
            return None
        if not s.k8s_service_host:
            return None
        host = f"[{s.k8s_service_host}]" if ":" in s.k8s_service_host else s.k8s_service_host
        ca = s.kube_ca_file or str(sa / "ca.crt")
        return cls(f"{s.k8s_service_protocol}://{host}:{s.k8s_service_port}", token, ca,
                   s.skip_tls_verify, timeout)

    def get(self, path: str) -> tuple[int, dict | None]:
        if self.scheme == "https":
            conn = HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ctx)
        else:
            conn = HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}",
                                               "Accept": "application/json"})
            r = conn.getresponse()
            body = r.read()
        except (OSError, ssl.SSLError) as e:
            raise ApiError(f"GET {path}: {e}") from None
        finally:
            conn.close()
        try:
            obj = json.loads(body) if body else None
        except ValueError:
            obj = None
        return r.status, obj


def _daemonset_name(s, api: ApiClient) -> str | None:
    if s.daemonset_name:
        return s.daemonset_name
    if not s.pod_name:
        return None
    status, pod = api.get(f"/api/v1/namespaces/{s.pod_namespace}/pods/{s.pod_name}")
    if status != 200 or not pod:
        return None
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "DaemonSet":
            return ref.get("name")
    return None


def decide(s, api_factory) -> tuple[bool, str]:
    """(keep, reason): keep=True leaves plugin and config in place. ``api_factory()`` returns an
    ApiClient, or None when there are no in-cluster credentials."""
    if s.disable_safe_upgrade:
        return False, "DISABLE_SAFE_UPGRADE is set"
    try:
        api = api_factory()
    except (OSError, ValueError, ssl.SSLError) as e:
        return True, f"cannot set up the API client ({e}): keeping the plugin to be safe"
    if api is None:
        return False, "no service-account credentials: cannot be an in-cluster upgrade"
    try:
        name = _daemonset_name(s, api)
        if name is None:
            return False, "cannot tell which DaemonSet owns this installer (set INSTALLER_DAEMONSET_NAME)"
        status, ds = api.get(f"/apis/apps/v1/namespaces/{s.pod_namespace}/daemonsets/{name}")
        if status == 404:
            return False, f"DaemonSet {s.pod_namespace}/{name} is gone"
        if status in (401, 403):
            return False, f"access to DaemonSet {name} revoked (HTTP {status}): uninstalled"
        if status != 200 or not ds:
            return True, f"DaemonSet lookup failed (HTTP {status}): keeping the plugin to be safe"
        if (ds.get("metadata") or {}).get("deletionTimestamp"):
            return False, f"DaemonSet {name} is being deleted"
        status, node = api.get(f"/api/v1/nodes/{s.node_name}")
        if status == 404:
            return False, f"node {s.node_name} is gone"
        if status != 200 or not node:
            return True, f"node lookup failed (HTTP {status}): keeping the plugin to be safe"
        why = mismatch(ds, node)
        if why:
            return False, f"DaemonSet {name} no longer targets this node: {why}"
        return True, f"DaemonSet {name} still targets node {s.node_name}: upgrade or restart"
    except ApiError as e:
        log.warning("API unreachable during shutdown", error=str(e))
        return True, "API server unreachable: keeping the plugin to be safe"
