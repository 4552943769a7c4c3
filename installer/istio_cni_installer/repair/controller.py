"""The repair controller: fixes pods on this node that started without redirect rules.

Fed by the node agent's pod cache (one watch serves both). A worker thread takes pods off
a queue, re-reads the latest copy, detects (``detect.validation_failure``; optionally a
netns check that our rules are in place) and acts once per pod UID:

* ``repair``: find the pod netns through /proc from its IP, then the plugin's own
  ``plan`` + ``netfilter.apply`` (exactly what ADD would have committed);
* ``label``: merge-patch ``cni.istio.io/uninitialized=true`` through ``pods/status``
  (the lower-privilege subresource upstream uses);
* ``delete``: delete with UID + resourceVersion preconditions (the pod is recreated and
  its sandbox goes through the CNI chain again), once the plugin is installed on this node
  (``plugin_ready``), so that a replacement landing here is redirected.

Each action posts a Kubernetes Event on the pod (unless ``create_events`` is off) and counts
``istio_cni_repair_pods_repaired_total{type,result}``. Failures retry with back-off up to
``max_attempts``; a pod that is gone is forgotten.

Which pods: the cache's watch (``spec.nodeName`` plus the settings' label/field selectors,
filtered by the API server). The node agent's cache carries no extra selectors, so with
selectors the controller needs its own cache (``pod_cache_for``); a mismatch is refused.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from istio_cni import netfilter
from istio_cni.log import log
from istio_cni.plugin import plan_pod

from ..kube.client import KubeClient
from ..kube.podcache import PodCache
from .detect import RepairSettings, name_of, pod_ips, uid_of, validation_failure
from .netns import find_netns

if TYPE_CHECKING:
    from istio_cni.rules.model import RuleSet

    from ..health import Metrics

EVENT_COMPONENT = "istio-cni-repair"


class RepairError(Exception):
    """An action could not be carried out (message says why); retried, then reported."""


class CannotRepair(RepairError):
    """An action that can never succeed for this pod: reported at once, never retried."""


def _default_plan(pod: dict, settings: RepairSettings) -> tuple[RuleSet | None, str]:
    """(RuleSet | None, reason) for ``pod`` through the plugin's own decision and rule code.

    Without a netns at hand, the pod's IPs stand in for the netns addresses that decide
    IPv6 (only which families have a usable address matters). ``settings`` is there for
    planners that need it; this one does not."""
    return plan_pod(pod, lambda: pod_ips(pod))


def pod_cache_for(api_client: KubeClient, settings: RepairSettings, **kw: Any) -> PodCache:
    """A pod cache watching exactly the pods ``settings`` select (node + selectors)."""
    return PodCache(
        api_client,
        settings.node_name,
        label_selector=settings.label_selectors,
        field_selector=settings.field_selectors,
        **kw,
    )


def cache_serves(cache: object, settings: RepairSettings) -> bool:
    """Whether ``cache`` watches exactly the pods the settings select."""
    return (
        getattr(cache, "node_name", None),
        getattr(cache, "label_selector", ""),
        getattr(cache, "field_selector", ""),
    ) == (settings.node_name, settings.label_selectors, settings.field_selectors)


class RepairController:
    def __init__(
        self,
        api_client: KubeClient,
        cache: PodCache,
        settings: RepairSettings,
        *,
        plan: Callable[[dict, RepairSettings], tuple[RuleSet | None, str]] = _default_plan,
        netfilter: Any = None,  # the istio_cni.netfilter module (a test's stand-in)
        retry_base: float = 0.5,
        metrics: Metrics | None = None,
        plugin_ready: Callable[[], bool] | None = None,
        plugin_wait: float = 1.0,
    ) -> None:
        if not cache_serves(cache, settings):
            raise ValueError(
                f"the pod cache watches node {getattr(cache, 'node_name', None)!r} with label selector "
                f"{getattr(cache, 'label_selector', '')!r} and field selector "
                f"{getattr(cache, 'field_selector', '')!r}, "
                f"but repair is set up for node {settings.node_name!r}, label selector {settings.label_selectors!r}, "
                f"field selector {settings.field_selectors!r}: build the cache with pod_cache_for(api, settings)"
            )
        self.api = api_client  # kube.client.KubeClient (shared with the pod cache)
        self.cache = cache
        self.settings = settings
        self.plan = plan
        self._netfilter = netfilter
        self.retry_base = retry_base
        self.metrics = metrics  # optional: .inc(name, **labels) (the installer's Metrics)
        # Optional () -> bool: the plugin is installed on this node now (the installer's
        # readiness). Delete mode waits for it, checking every ``plugin_wait`` seconds.
        self.plugin_ready = plugin_ready
        self.plugin_wait = plugin_wait
        self._waiting: set[str] = set()  # UIDs whose deletion waits for the plugin (logged once)
        self.counts: dict[tuple[str, str], int] = {}
        self.handled: set[str] = set()  # UIDs acted on (success or given up): never again
        self.checked: set[str] = set()  # UIDs whose netns rules were already verified
        self._attempts: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def netfilter(self) -> Any:
        if self._netfilter is None:
            self._netfilter = netfilter
        return self._netfilter

    # ---- plumbing ---------------------------------------------------------------------------
    def start(self) -> RepairController:
        self.cache.listeners.append(self.on_event)
        for pod in self.cache.pods():  # pods listed before we subscribed
            self.on_event("ADDED", pod)
        self._thread = threading.Thread(target=self._work, name="repair", daemon=True)
        self._thread.start()
        log.info("repair controller started", mode=self.settings.mode, node=self.settings.node_name)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self.on_event in self.cache.listeners:
            self.cache.listeners.remove(self.on_event)
        if self._thread is not None:
            self._thread.join(timeout)

    def on_event(self, kind: str, pod: dict) -> None:
        uid = uid_of(pod)
        if kind == "DELETED":
            with self._lock:
                self.handled.discard(uid)
                self.checked.discard(uid)
                self._waiting.discard(uid)
                self._attempts.pop(uid, None)
            return
        if uid in self.handled:
            return
        meta = pod.get("metadata") or {}
        self._queue.put((meta.get("namespace", ""), meta.get("name", ""), uid))

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                self.reconcile(*item)
            except Exception as e:  # never let one pod stop the controller
                log.error("repair reconcile crashed", pod=f"{item[0]}/{item[1]}", error=repr(e)[:300])

    def _retry_later(self, ns: str, name: str, uid: str) -> bool:
        n = self._attempts.get(uid, 0) + 1
        self._attempts[uid] = n
        if n >= self.settings.max_attempts:
            return False
        timer = threading.Timer(self.retry_base * 2 ** (n - 1), self._queue.put, ((ns, name, uid),))
        timer.daemon = True
        timer.start()
        return True

    # ---- the decision -------------------------------------------------------------------------
    def broken_reason(self, pod: dict) -> str:
        why = validation_failure(pod, self.settings)
        if why or not self.settings.check_netns:
            return why
        return self._rules_missing(pod)

    def _rules_missing(self, pod: dict) -> str:
        uid = uid_of(pod)
        ips = pod_ips(pod)
        if uid in self.checked or not ips or (pod.get("status") or {}).get("phase") not in ("Pending", "Running"):
            return ""
        ruleset, _reason = self.plan(pod, self.settings)
        if ruleset is None:
            self.checked.add(uid)
            return ""
        netns = find_netns(ips, self.settings.proc_root)
        if not netns:
            return ""  # sandbox not up yet (or gone); a later event retries
        self.checked.add(uid)
        diffs = self.netfilter.check(netns, ruleset, self.settings.netfilter_backend)
        return f"redirect rules missing in the pod netns ({'; '.join(diffs)[:200]})" if diffs else ""

    def reconcile(self, namespace: str, name: str, uid: str) -> None:
        pod = self.cache.get(namespace, name)
        if pod is None or uid_of(pod) != uid or uid in self.handled:
            return
        why = self.broken_reason(pod)
        if not why:
            return
        mode = self.settings.mode
        if mode == "delete" and not self._plugin_in_place(namespace, name, uid):
            return
        try:
            detail = getattr(self, f"_{mode}")(pod)
        except Exception as e:
            if not isinstance(e, CannotRepair) and self._retry_later(namespace, name, uid):
                log.warning("repair failed, will retry", pod=name_of(pod), mode=mode, error=repr(e)[:300])
                return
            self.handled.add(uid)
            self._count(mode, "failure")
            self._event(
                pod,
                "Warning",
                "IstioCNIRepairFailed",
                f"pod is missing traffic redirection ({why}); {mode} failed: {e}",
            )
            log.error("repair gave up", pod=name_of(pod), mode=mode, error=repr(e)[:300])
            return
        self.handled.add(uid)
        self._count(mode, "success")
        self._event(pod, "Normal", "IstioCNIRepaired", f"pod was missing traffic redirection ({why}); {detail}")
        log.info("pod repaired", pod=name_of(pod), mode=mode, why=why, action=detail)

    def _plugin_in_place(self, namespace: str, name: str, uid: str) -> bool:
        """Delete only once the plugin is installed on this node: the owner recreates the pod
        at once, and a replacement landing here before the plugin would start unredirected
        again (the node program starts repair while its first install is still running)."""
        if self.plugin_ready is None or self.plugin_ready():
            self._waiting.discard(uid)
            return True
        if uid not in self._waiting:
            self._waiting.add(uid)
            log.info("broken pod waits for the plugin on this node before its deletion", pod=f"{namespace}/{name}")
        timer = threading.Timer(self.plugin_wait, self._queue.put, ((namespace, name, uid),))
        timer.daemon = True
        timer.start()
        return False

    # ---- the three modes --------------------------------------------------------------------------
    def _repair(self, pod: dict) -> str:
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            # restartPolicy Never (a Job's pod): kubelet tore the sandbox down with the failed
            # validation; there is no netns left to fix.
            raise CannotRepair(
                f"the pod is {phase} (restartPolicy {(pod.get('spec') or {}).get('restartPolicy', 'Always')}): "
                "its sandbox is gone, nothing to repair in place; repair.checkNetns fixes such pods "
                "before their validation gives up, delete mode lets their owner recreate them"
            )
        netns = find_netns(pod_ips(pod), self.settings.proc_root)
        if not netns:
            ips = ", ".join(pod_ips(pod)) or "(none)"
            raise RepairError(f"no network namespace on this node holds pod IP(s) {ips}")
        ruleset, reason = self.plan(pod, self.settings)
        if ruleset is None:
            return f"nothing to commit: {reason}"
        backend = self.netfilter.apply(netns, ruleset, self.settings.netfilter_backend)
        return f"redirect rules committed in {netns} ({backend})"

    def _label(self, pod: dict) -> str:
        meta = pod.get("metadata") or {}
        key, value = self.settings.label_key, self.settings.label_value
        if key in (meta.get("labels") or {}):
            return f"label {key} already present"
        self.api.patch_pod_status(meta["namespace"], meta["name"], {"metadata": {"labels": {key: value}}})
        return f"labelled {key}={value}"

    def _delete(self, pod: dict) -> str:
        meta = pod.get("metadata") or {}
        self.api.delete_pod(meta["namespace"], meta["name"], meta.get("uid", ""), meta.get("resourceVersion", ""))
        return "deleted so its sandbox is recreated through the CNI chain"

    # ---- reporting -----------------------------------------------------------------------------------
    def _count(self, kind: str, result: str) -> None:
        with self._lock:
            self.counts[(kind, result)] = self.counts.get((kind, result), 0) + 1
        if self.metrics is not None:
            self.metrics.inc("istio_cni_repair_pods_repaired_total", type=kind, result=result)

    def _event(self, pod: dict, etype: str, reason: str, message: str) -> None:
        if not self.settings.create_events:  # REPAIR_CREATE_EVENTS=false (and no events RBAC)
            return
        meta = pod.get("metadata") or {}
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'pod')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1000],
            "type": etype,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": EVENT_COMPONENT, "host": self.settings.node_name},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": self.settings.node_name,
        }
        try:
            self.api.create_event(meta.get("namespace") or "", body)
        except Exception as e:  # an event is informative; never fail the repair over it
            log.warning("could not post repair event", pod=name_of(pod), error=repr(e)[:200])
