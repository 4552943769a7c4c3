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

from collections.abc import Callable
from typing import TYPE_CHECKING

from istio_cni.errors import KubernetesLookupError
from istio_cni.log import log

from .kube.client import ApiError, KubeClient, NoCredentials, in_cluster_client
from .nodematch import mismatch

if TYPE_CHECKING:
    from .settings import Settings


class ApiUnreachable(Exception):
    """The API server could not be asked (connection, TLS, timeout); an HTTP status is an answer."""


class ApiClient:
    """GET-only view of the node agent's ``KubeClient`` (same TLS, token and URL handling):
    answers ``(status, object)`` instead of raising on 4xx/5xx, because the shutdown decision
    reads 403/404 as answers; only an unreachable API raises ``ApiUnreachable``. Never logs the token."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, s: Settings, timeout: float = 3.0) -> ApiClient | None:
        """The installer's own in-cluster identity, or None without one (no token, no host)."""
        try:
            return cls(in_cluster_client(s, timeout))
        except NoCredentials:
            return None

    def get(self, path: str) -> tuple[int, dict | None]:
        try:
            return 200, self.client.request("GET", path)
        except ApiError as e:
            return e.status, None
        except ValueError:  # a 2xx whose body is not JSON: callers treat it as a failed lookup
            return 200, None
        except (OSError, KubernetesLookupError) as e:  # ssl.SSLError is an OSError
            raise ApiUnreachable(f"GET {path}: {e}") from None


def _daemonset_name(s: Settings, api: ApiClient) -> str | None:
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


def decide(s: Settings, api_factory: Callable[[], ApiClient | None]) -> tuple[bool, str]:
    """(keep, reason): keep=True leaves plugin and config in place. ``api_factory()`` returns an
    ApiClient, or None when there are no in-cluster credentials."""
    if s.disable_safe_upgrade:
        return False, "DISABLE_SAFE_UPGRADE is set"
    try:
        api = api_factory()
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
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
    except ApiUnreachable as e:
        log.warning("API unreachable during shutdown", error=str(e))
        return True, "API server unreachable: keeping the plugin to be safe"
