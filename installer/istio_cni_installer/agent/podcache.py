"""The pods of this node, kept current by list + watch (field selector ``spec.nodeName``).

Pods are kept as the plain JSON dicts the API returns (what ``decide``/``redirect`` read),
minus ``metadata.managedFields`` (often half the object, never read by us). Going through
the ``kubernetes`` client's raw responses (``_preload_content=False``) skips its model
classes, which would triple the memory and cost a conversion back to dicts per ADD.

Watch protocol: list (resourceVersion R) -> watch from R with bookmarks; each event moves
R on; a server-side timeout re-watches from R; "410 Gone" (R compacted away) or any error
re-lists (after a short back-off). Listeners (the repair controller) get every change.
"""

from __future__ import annotations

import json
import threading
import time

from istio_cni.log import log

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

    def __init__(self, api_client, node_name: str, *, watch_seconds: int = WATCH_SECONDS,
                 relist_backoff: float = RELIST_BACKOFF) -> None:
        from kubernetes import client

        if not node_name:
            raise ValueError("PodCache needs the node name (KUBERNETES_NODE_NAME)")
        self.core = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.watch_seconds = watch_seconds
        self.relist_backoff = relist_backoff
        self.listeners: list = []  # callables (event_type, pod); called on the watch thread
        self.relists = 0
        self._pods: dict[tuple[str, str], dict] = {}
        self._cond = threading.Condition()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp = None
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
        """GET the pod from the API (None on 404); raises ApiException/OSError otherwise."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                 _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        pod = slim(json.loads(resp.data))
        self._store("ADDED", pod)
        return pod

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> PodCache:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the watch loop ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list()
                while not self._stop.is_set():
                    self._watch()
            except Gone:
                log.info("pod watch expired (410 Gone), re-listing", node=self.node_name,
                         resource_version=self.resource_version)
                continue
            except Exception as e:  # API down, reset, bad JSON: back off and re-list
                if self._stop.is_set():
                    return
                log.warning("pod watch failed, re-listing", node=self.node_name, error=repr(e)[:300])
                self._stop.wait(self.relist_backoff)

    def _selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    def _list(self) -> None:
        resp = self.core.list_pod_for_all_namespaces(field_selector=self._selector(),
                                                     _preload_content=False, _request_timeout=30)
        doc = json.loads(resp.data)
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
        log.info("pod cache listed", node=self.node_name, pods=len(fresh),
                 resource_version=self.resource_version)

    def _watch(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.core.list_pod_for_all_namespaces(
                field_selector=self._selector(), watch=True, allow_watch_bookmarks=True,
                resource_version=self.resource_version, timeout_seconds=self.watch_seconds,
                _preload_content=False, _request_timeout=(10, self.watch_seconds + 30))
        except ApiException as e:
            if e.status == 410:
                raise Gone() from None
            raise
        self._resp = resp
        try:
            # stop() sets the flag, then closes _resp: one of the two always catches us.
            if self._stop.is_set():
                return
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                self._event(json.loads(line))
        finally:
            self._resp = None
            resp.release_conn()

    def _event(self, ev: dict) -> None:
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


def _lines(resp):
    """Split a chunked watch stream into JSON lines."""
    buf = b""
    for chunk in resp.stream(65536, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf
