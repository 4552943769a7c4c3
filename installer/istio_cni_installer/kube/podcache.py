"""The pods of this node, kept current by list + watch (field selector ``spec.nodeName``).

Pods are kept as the plain JSON dicts the API returns (what ``decide``/``redirect`` read),
minus ``metadata.managedFields`` (often half the object, never read by us). The API client
is ``client.KubeClient`` (no model classes: dicts in, dicts out).

Watch protocol: list (resourceVersion R) -> watch from R with bookmarks; each event moves
R on; a server-side timeout re-watches from R; "410 Gone" (R compacted away) or any error
re-lists (after a short back-off). Listeners (the repair controller) get every change.
"""

from __future__ import annotations

import json
import threading
import time

from istio_cni.log import log

from .client import ApiError, KubeClient

WATCH_SECONDS = 290  # server-side watch timeout; the client read timeout sits above it
RELIST_BACKOFF = 1.0


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): re-list."""


def slim(pod: dict) -> dict:
    meta = pod.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return pod


def _key(pod: dict) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class PodCache:
    """``get(ns, name)`` answers from memory; ``fetch`` GETs one pod the watch has not shown yet."""

    def __init__(
        self,
        api: KubeClient,
        node_name: str,
        *,
        watch_seconds: int = WATCH_SECONDS,
        relist_backoff: float = RELIST_BACKOFF,
        label_selector: str = "",
        field_selector: str = "",
    ) -> None:
        if not node_name:
            raise ValueError("PodCache needs the node name (KUBERNETES_NODE_NAME)")
        self.api = api  # kubeclient.KubeClient
        self.node_name = node_name
        # Extra server-side filters (the repair controller's REPAIR_LABEL/FIELD_SELECTORS);
        # the node agent's cache has none: it must see every pod of the node.
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_seconds = watch_seconds
        self.relist_backoff = relist_backoff
        self.listeners: list = []  # callables (event_type, pod); called on the watch thread
        self.relists = 0
        self._events = 0  # watch events seen (a stream that delivers none is backed off)
        self._pods: dict[tuple[str, str], dict] = {}
        self._cond = threading.Condition()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.resource_version = ""

    # ---- reads ------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict | None:
        with self._cond:
            return self._pods.get((namespace, name))

    def pods(self) -> list[dict]:
        with self._cond:
            return list(self._pods.values())

    def __len__(self) -> int:
        with self._cond:
            return len(self._pods)

    def wait_for(self, namespace: str, name: str, timeout: float) -> dict | None:
        """The pod once the watch delivers it, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                pod = self._pods.get((namespace, name))
                left = deadline - time.monotonic()
                if pod is not None or left <= 0:
                    return pod
                self._cond.wait(left)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def fetch(self, namespace: str, name: str, timeout: float) -> dict | None:
        """GET the pod from the API (None on 404); raises ApiError/OSError otherwise."""
        pod = self.api.get_pod(namespace, name, timeout=timeout)
        if pod is None:
            return None
        pod = slim(pod)
        filtered = self.label_selector or self.field_selector  # cannot tell if the watch would show it
        if not filtered and (pod.get("spec") or {}).get("nodeName") == self.node_name:
            self._store("ADDED", pod)  # ours: the watch will keep it current from here
        return pod

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> PodCache:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self.api.close()  # aborts the open watch stream
        if self._thread is not None:
            # Daemon thread: one stuck in a connect is abandoned (it re-checks _stop before
            # touching anything), so shutdown never waits on an unreachable API.
            self._thread.join(timeout)

    # ---- the watch loop ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list()
                while not self._stop.is_set():
                    started, events = time.monotonic(), self._events
                    self._watch()
                    if self._events == events and time.monotonic() - started < 1.0:
                        # A watch that ends at once with nothing (a proxy cutting streams):
                        # do not spin on the API server.
                        self._stop.wait(self.relist_backoff)
            except Gone:
                log.info(
                    "pod watch expired (410 Gone), re-listing",
                    node=self.node_name,
                    resource_version=self.resource_version,
                )
                continue
            except Exception as e:  # API down, reset, bad JSON: back off and re-list
                if self._stop.is_set():
                    return
                log.warning("pod watch failed, re-listing", node=self.node_name, error=repr(e)[:300])
                self._stop.wait(self.relist_backoff)

    def _selector(self) -> str:
        node = f"spec.nodeName={self.node_name}"
        return f"{node},{self.field_selector}" if self.field_selector else node

    def _list(self) -> None:
        doc = self.api.request(
            "GET", self.api.pods_path(fieldSelector=self._selector(), labelSelector=self.label_selector), timeout=30
        )
        fresh = {}
        for pod in doc.get("items") or []:
            fresh[_key(pod)] = slim(pod)
        with self._cond:
            old, self._pods = self._pods, fresh
            self.resource_version = (doc.get("metadata") or {}).get("resourceVersion", "")
            self.relists += 1
            self._cond.notify_all()
        for key, pod in old.items():
            if key not in fresh:
                self._notify("DELETED", pod)
        for pod in fresh.values():
            self._notify("ADDED", pod)
        self._synced.set()
        log.info("pod cache listed", node=self.node_name, pods=len(fresh), resource_version=self.resource_version)

    def _watch(self) -> None:
        path = self.api.pods_path(
            fieldSelector=self._selector(),
            labelSelector=self.label_selector,
            watch="true",
            allowWatchBookmarks="true",
            resourceVersion=self.resource_version,
            timeoutSeconds=str(self.watch_seconds),
        )
        try:
            # stop() sets the flag, then closes the client (aborts open streams, refuses new ones).
            for line in self.api.stream_lines(path, read_timeout=self.watch_seconds + 30):
                if self._stop.is_set():
                    return
                self._event(json.loads(line))
        except ApiError as e:
            if e.status == 410:
                raise Gone() from None
            raise

    def _event(self, ev: dict) -> None:
        self._events += 1
        kind, obj = ev.get("type"), ev.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error event: {obj.get('message') or obj}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise RuntimeError(f"unknown watch event type {kind!r}")
        self._store(kind, slim(obj))
        if rv:
            self.resource_version = rv

    def _store(self, kind: str, pod: dict) -> None:
        key = _key(pod)
        with self._cond:
            if kind == "DELETED":
                self._pods.pop(key, None)
            else:
                self._pods[key] = pod
            self._cond.notify_all()
        self._notify(kind, pod)

    def _notify(self, kind: str, pod: dict) -> None:
        for fn in self.listeners:
            try:
                fn(kind, pod)
            except Exception as e:  # a listener bug must not stop the watch
                log.error("pod cache listener failed", listener=repr(fn)[:80], error=repr(e)[:300])
