"""One plugin request, answered with the same code the plugin's direct path runs.

``plan`` (decision ladder + rules) reads pods through a cache-backed getter; the commit
goes through ``istio_cni.netfilter.apply``. Commits are serialised by one lock: libiptc
is not thread-safe, and each commit enters the pod netns on the calling thread. A thread
that could not restore its netns must never serve again, so that ends the process.

Answers (see ``istio_cni.agent_client``): ``{"result"}``, ``{"error"}`` (fail the ADD),
``{"fallback"}`` (the plugin goes direct): only when we cannot see the pod - a cache
miss whose direct GET did not find it in time, or the API being unreachable from here -
or cannot see its netns path, or the plugin's deadline passed before we got to it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from istio_cni import errors, netfilter
from istio_cni.agent_client import MAX_TIMEOUT
from istio_cni.config import parse_conf, parse_k8s_args
from istio_cni.log import log
from istio_cni.netfilter.routes import netns_addresses
from istio_cni.plugin import plan, prev_result
from istio_cni.skel import check_netns, decode_netconf

from .addreports import observe_agent_add

if TYPE_CHECKING:
    from istio_cni.config import K8sArgs, PluginConf
    from istio_cni.rules.model import RuleSet

    from ..health import Metrics
    from ..kube.podcache import PodCache

# Answer this much before the plugin's own deadline, so the answer is read, not cut off.
DEADLINE_MARGIN = 0.3
MIN_BUDGET = 0.1
RESTORE_FAILED_EXIT = 70


class Fallback(Exception):
    """We cannot decide for this pod; the plugin should use its direct path (message = why)."""


def _default_apply(netns: str, ruleset: RuleSet, preferred: str) -> str:
    return netfilter.apply(netns, ruleset, preferred=preferred)


def _default_plan(
    conf: PluginConf,
    k8s: K8sArgs,
    get_pod: Callable[[str, str], dict],
    addresses: Callable[[], Sequence[str]],
) -> tuple[RuleSet | None, str]:
    return plan(conf, k8s, addresses, get_pod=get_pod)


def warm_up() -> None:
    """Import the modules the plugin code loads lazily (its per-exec import budget), so the
    agent's first ADD pays no import."""
    import istio_cni.decide  # noqa: F401
    import istio_cni.redirect  # noqa: F401
    import istio_cni.rules.builder  # noqa: F401


class Handler:
    """Turns decoded request bodies into answer dicts. ``cache``: a ``PodCache``-like object."""

    def __init__(
        self,
        cache: PodCache,
        *,
        plan: Callable[..., tuple[RuleSet | None, str]] = _default_plan,
        apply: Callable[[str, RuleSet, str], str] = _default_apply,
        metrics: Metrics | None = None,
    ) -> None:
        self.cache = cache
        self.metrics = metrics  # optional: .inc(name, **labels) (the installer's Metrics)
        self.plan = plan
        self.apply = apply
        self.commit_lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self._counts_lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.inc("istio_cni_agent_requests_total", result=outcome)

    def pod_getter(self, budget_end: float, uid: str = "") -> Callable[[str, str], dict]:
        """``get_pod(ns, name)`` for ``plan``: cache, then one GET, then wait for the watch.

        ``uid`` (K8S_POD_UID, when the runtime sends it) guards against a stale cache entry
        of a deleted pod whose successor has the same name (StatefulSets) but no watch
        event yet: a cached pod with another UID counts as a miss."""

        def get_pod(namespace: str, name: str) -> dict:
            pod = self.cache.get(namespace, name)
            if pod is not None and (not uid or (pod.get("metadata") or {}).get("uid") == uid):
                return pod
            left = budget_end - time.monotonic()
            try:
                pod = self.cache.fetch(namespace, name, timeout=max(left, MIN_BUDGET))
            except Exception as e:  # API unreachable from the agent: the plugin may do better
                raise Fallback(f"pod {namespace}/{name} not cached and GET failed: {e!r}"[:400]) from None
            if pod is None:
                pod = self.cache.wait_for(namespace, name, max(budget_end - time.monotonic(), 0))
            if pod is None:
                raise Fallback(f"pod {namespace}/{name} not visible to the agent yet")
            return pod

        return get_pod

    def handle(self, req: dict) -> dict:
        """Answer one ``/v1/cni`` request body (already JSON-decoded)."""
        started = time.monotonic()
        try:
            answer = self._handle(req, started)
        except Fallback as e:
            self._count("fallback")
            log.info("agent cannot decide, plugin falls back", cause=str(e))
            return {"fallback": str(e)}
        except errors.CNIError as e:
            self._count("error")
            log.error(e.msg, code=e.code, details=e.details, container=str(req.get("container_id"))[:12])
            observe_agent_add(self.metrics, req.get("elapsed"), time.monotonic() - started, "error")
            return {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
        except Exception as e:  # an agent-side bug: the plugin's direct path may still work
            self._count("fallback")
            log.error("agent failed handling a request", error=repr(e)[:400])
            return {"fallback": f"agent internal error: {e!r}"[:400]}
        self._count("ok")
        observe_agent_add(self.metrics, req.get("elapsed"), time.monotonic() - started, "ok")
        return answer

    def _handle(self, req: dict, started: float) -> dict:
        command = req.get("command")
        if command != "ADD":
            raise errors.InvalidEnvironmentVariables(f"the agent serves ADD only, not {command!r}")
        for field in ("netns", "args", "stdin"):
            if not isinstance(req.get(field), str):
                raise errors.DecodingFailure(f"agent request field {field!r} missing or not a string")
        deadline = req.get("deadline", 2.0)
        if not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or not deadline > 0:
            raise errors.DecodingFailure(
                "agent request field 'deadline' must be a positive number", repr(deadline)[:40]
            )
        # The plugin never waits longer (agent_client.MAX_TIMEOUT); a bigger or infinite value
        # must not hold a serving thread in the pod getter's wait for ever.
        deadline = min(deadline, MAX_TIMEOUT)
        netconf = decode_netconf(req["stdin"].encode())
        conf = parse_conf(netconf)
        k8s = parse_k8s_args(req["args"])
        pod = f"{k8s.pod_namespace}/{k8s.pod_name}"
        budget_end = started + deadline - DEADLINE_MARGIN
        expires = req.get("expires")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            # Time spent in our accept backlog counts against the plugin's wait, not ours.
            budget_end = min(budget_end, started + (expires - time.time()) - DEADLINE_MARGIN)
        if budget_end <= time.monotonic():
            raise Fallback("request expired while queued in the agent (plugin has given up)")
        ruleset, reason = self.plan(conf, k8s, self.pod_getter(budget_end, k8s.pod_uid), self._addresses(req["netns"]))
        result = prev_result(netconf)
        if ruleset is None:
            log.info("skipping pod", pod=pod, reason=reason, via="agent")
            return {"result": result}
        self._check_netns(req["netns"])
        with self.commit_lock:
            if time.monotonic() > budget_end:
                # The plugin has given up and is committing itself; do not race it.
                raise Fallback("agent queue too long: deadline passed before the commit")
            backend = self._commit(req["netns"], ruleset, conf.netfilter_backend)
        log.info(
            "redirect rules committed",
            pod=pod,
            netns=req["netns"],
            backend=backend,
            via="agent",
            ms=round((time.monotonic() - started) * 1000, 2),
        )
        return {"result": result}

    def _addresses(self, path: str) -> Callable[[], list[str]]:
        """The pod netns' own addresses, read only for a pod that redirects: they decide
        IPv6 as on the plugin's direct path (and as upstream)."""

        def addresses() -> list[str]:
            self._check_netns(path)
            try:
                return netns_addresses(path)
            except errors.NetnsRestoreFailed as e:  # as in _commit: never serve from a pod's netns
                log.error("could not restore the agent's own netns; exiting", error=repr(e))
                os._exit(RESTORE_FAILED_EXIT)

        return addresses

    @staticmethod
    def _check_netns(path: str) -> None:
        """The plugin already checked the path in the host's mount namespace; if *we* cannot
        open it (no /var/run/netns mount, no hostPID for /proc/<pid>/ns/net), that is our
        deployment's blind spot, not a bad netns: let the plugin commit directly."""
        if not os.path.exists(path):
            raise Fallback(f"netns {path} is not visible to the agent (mount the host's netns dir into it)")
        check_netns(path)

    def _commit(self, netns: str, ruleset: RuleSet, preferred: str) -> str:
        try:
            return self.apply(netns, ruleset, preferred)
        except errors.NetnsRestoreFailed as e:
            # This thread may now live in a pod's netns: serving on would commit the next
            # pod's rules (or talk to the API) from the wrong namespace. Die; kubelet restarts us.
            log.error("could not restore the agent's own netns; exiting", error=repr(e))
            os._exit(RESTORE_FAILED_EXIT)
