"""The startup taint: a node registers with ``cni.istio.io/not-ready:NoSchedule`` (kubelet
``registerWithTaints``) and this node program removes it from its own node once the plugin,
its kubeconfig and the conflist entry are all in place, so no pod is scheduled there before
the plugin can redirect it.

Rules, and why:
- Only our key is removed (every effect of it); other taints are untouched. The patch is a JSON
  patch whose ``test`` op pins the whole taints list we read, so a concurrent change to the
  taints (another controller, an admin) fails it with 409/422 instead of being overwritten; we
  then read the node again and retry. Node status heartbeats do not touch ``spec.taints``, so
  they never cause a retry.
- No taint, no write: a node that never had it (or lost it) costs one GET, once per process.
- Once removed or found absent, the taint is never checked or re-added by this process, even if
  the install breaks later (as upstream's controller): the drift loop repairs within
  milliseconds, and re-tainting a running node would not evict its pods anyway.
- The install is re-checked right before the PATCH, so a pass that saw it complete but raced
  a removal does not untaint the node.
- Runs in its own thread so a slow or unreachable API server never delays the drift loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from istio_cni.log import log

from .kube.client import ApiError, KubeClient, api_client_from_settings

if TYPE_CHECKING:
    from .health import Metrics
    from .settings import Settings

DEFAULT_KEY = "cni.istio.io/not-ready"
CONFLICT_RETRIES = 5  # re-reads after a concurrent change to the taints, per attempt
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
STOP_WAIT_SECONDS = 1.0
FORBIDDEN_HINT = (
    "the node program's service account needs get and patch on nodes (chart: taint.enabled=true grants them)"
)


def has_taint(node: dict, key: str) -> bool:
    return any(t.get("key") == key for t in (node.get("spec") or {}).get("taints") or [])


def removal_patch(node: dict, key: str) -> list[dict] | None:
    """JSON patch removing every taint with ``key`` and nothing else; ``None`` when absent.

    The ``test`` op makes the API server refuse the patch if the taints changed since ``node``
    was read (the list is compared whole, order included)."""
    taints = (node.get("spec") or {}).get("taints") or []
    keep = [t for t in taints if t.get("key") != key]
    if len(keep) == len(taints):
        return None
    return [
        {"op": "test", "path": "/spec/taints", "value": taints},
        {"op": "replace", "path": "/spec/taints", "value": keep},
    ]


class Conflict(Exception):
    """The taints kept changing between our read and our patch."""


def remove_taint(client: KubeClient, node_name: str, key: str, installed: Callable[[], bool] = lambda: True) -> str:
    """One attempt: ``"removed"``, ``"absent"`` or ``"not-installed"`` (nothing written).
    Raises ``ApiError`` (e.g. 403), ``Conflict`` or ``OSError``; the caller retries."""
    path = f"/api/v1/nodes/{quote(node_name)}"
    for _ in range(CONFLICT_RETRIES):
        node = client.request("GET", path)
        patch = removal_patch(node, key)
        if patch is None:
            return "absent"
        if not installed():
            return "not-installed"
        try:
            client.request("PATCH", path, patch, content_type="application/json-patch+json")
            return "removed"
        except ApiError as e:
            # 422: our test op failed (the taints changed); 409: a resourceVersion conflict.
            if e.status not in (409, 422):
                raise
            log.info(
                "node taints changed while removing the startup taint; reading again", node=node_name, status=e.status
            )
    raise Conflict(f"node {node_name}: taints changed {CONFLICT_RETRIES} times in a row")


class StartupTaint:
    """Service: waits for ``kick()`` (the installer saw everything in place), then removes the
    taint, retrying with backoff on errors until it is removed or found absent."""

    name = "startup-taint"

    def __init__(
        self,
        settings: Settings,
        installed: Callable[[], bool],
        metrics: Metrics | None = None,
        client_factory: Callable[[], KubeClient] | None = None,
    ) -> None:
        self.s, self.key, self.node = settings, settings.startup_taint_key, settings.node_name
        self.installed = installed  # () -> bool: all parts in place right now
        self.metrics = metrics
        self.client_factory = client_factory or (lambda: api_client_from_settings(settings))
        self.client: KubeClient | None = None
        self.outcome: str | None = None  # "removed" / "absent" once settled
        self.last_error = ""
        self._kicked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        self._kicked.set()

    def attempt(self) -> str:
        """One try; ``"removed"``, ``"absent"``, ``"not-installed"`` or ``"error"`` (logged)."""
        try:
            if self.client is None:
                self.client = self.client_factory()
            result = remove_taint(self.client, self.node, self.key, self.installed)
        except ApiError as e:
            hint = FORBIDDEN_HINT if e.status == 403 else ""
            return self._failed(str(e), hint)
        except (Conflict, OSError, ValueError) as e:
            return self._failed(str(e), "")
        self.last_error = ""
        if result == "removed":
            log.info(
                "startup taint removed: pods can be scheduled on this node",
                node=self.node,
                taint=f"{self.key}:NoSchedule",
            )
            if self.metrics is not None:
                self.metrics.inc("istio_cni_startup_taint_removed_total")
        elif result == "absent":
            log.debug("startup taint absent: nothing to remove", node=self.node, taint=self.key)
        return result

    def _failed(self, error: str, hint: str) -> str:
        if error != self.last_error:  # once per distinct error, not once per retry
            log.error(
                "cannot remove the startup taint; will retry",
                node=self.node,
                taint=self.key,
                error=error,
                **({"hint": hint} if hint else {}),
            )
        self.last_error = error
        return "error"

    def run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            self._kicked.wait()
            if self._stop.is_set():
                return
            self._kicked.clear()
            result = self.attempt()
            if result in ("removed", "absent"):
                self.outcome = result
                return
            if result == "not-installed":
                continue  # the installer kicks again once it is back in place
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self._kicked.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, deadline: float | None = None) -> None:
        self._stop.set()
        self._kicked.set()
        if self._thread is not None:
            # Nothing to clean up: wait briefly only (a request in flight ends on its own timeout).
            budget = STOP_WAIT_SECONDS if deadline is None else min(STOP_WAIT_SECONDS, deadline - time.monotonic())
            self._thread.join(max(0.0, budget))
