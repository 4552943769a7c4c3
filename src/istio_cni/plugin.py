"""The plugin's commands: cmd_add / cmd_check / cmd_del / cmd_status / cmd_gc.

ADD, in order (each step's module does the work; this file is the ladder):

1. netconf -> ``PluginConf``; ``CNI_ARGS`` -> ``K8sArgs`` (unknown keys need IgnoreUnknown).
2. Pass through, without contacting the API: not a Kubernetes pod; excluded namespace;
   the node program's own pod.
3. GET the pod (host netns; bounded retry; fail closed with code 11).
4. ``decide``: skip (one log line with the reason) or redirect.
5. ``redirect_from_pod`` -> ``RedirectConfig`` (a bad annotation fails the ADD).
6. ``build`` -> ``RuleSet``; commit it inside the pod netns through the chosen backend.
7. Hand ``prevResult`` on unchanged, in the caller's ``cniVersion``.

CHECK recomputes what ADD would commit now and compares it with the netns; DEL removes
what we own if the netns still exists and never contacts the API; STATUS reports
whether the plugin can work at all; GC has no host-side state to collect.
"""

from __future__ import annotations

from . import errors
from .config import SELF_POD_PREFIX, parse_conf, parse_k8s_args
from .log import log
from .versions import convert_result

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import K8sArgs, PluginConf
    from .rules.model import RuleSet
    from .skel import CmdArgs


def prev_result(netconf: dict) -> dict:
    version = netconf.get("cniVersion") or "0.1.0"
    prev = netconf.get("prevResult")
    if not prev:
        return {"cniVersion": version}
    if not isinstance(prev, dict):
        raise errors.InvalidNetworkConfig("prevResult must be an object", repr(prev)[:200])
    return convert_result(prev, version)


def _setup(args: CmdArgs) -> tuple[PluginConf, K8sArgs]:
    conf = parse_conf(args.netconf)
    log.set_level(conf.log_level)
    k8s = parse_k8s_args(args.args)
    log.bind(container=args.container_id[:12], pod=f"{k8s.pod_namespace}/{k8s.pod_name}")
    return conf, k8s


def _pass_through_reason(conf: PluginConf, k8s: K8sArgs) -> str:
    """Why this attachment needs no API lookup at all ("" when it does)."""
    if not k8s.pod_name or not k8s.pod_namespace:
        return "not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS)"
    if k8s.pod_namespace in conf.exclude_namespaces:
        return f"namespace {k8s.pod_namespace} is excluded"
    if conf.pod_namespace and k8s.pod_namespace == conf.pod_namespace and k8s.pod_name.startswith(SELF_POD_PREFIX):
        return "the istio-cni node pod itself"
    return ""


def plan(
    conf: PluginConf,
    k8s: K8sArgs,
    addresses: Callable[[], Sequence[str]],
    get_pod: Callable[[str, str], dict] | None = None,
) -> tuple[RuleSet | None, str]:
    """Look the pod up and decide: returns (RuleSet | None, reason). Shared by ADD/CHECK
    and the node agent (which passes its cache-backed ``get_pod``).

    ``addresses()`` returns the pod netns' own addresses (``netfilter.routes.
    netns_addresses``); it is called only for a pod that redirects, and decides IPv6 as
    upstream does. The default ``get_pod`` is the API lookup (``k8s.get_pod``)."""
    if get_pod is None:
        from .k8s import get_pod as k8s_get_pod

        def get_pod(ns: str, name: str) -> dict:
            return k8s_get_pod(conf, ns, name)

    return plan_pod(get_pod(k8s.pod_namespace, k8s.pod_name), addresses)


def plan_pod(pod: dict, addresses: Callable[[], Sequence[str]]) -> tuple[RuleSet | None, str]:
    """``plan`` for a pod already in hand (the repair controller has it from its cache):
    the decision ladder, then the rules; ``addresses`` as in ``plan``."""
    from .decide import Skip, decide

    verdict = decide(pod)
    if isinstance(verdict, Skip):  # else REDIRECT
        return None, verdict.reason
    from .redirect import redirect_from_pod
    from .rules.builder import build

    return build(redirect_from_pod(pod, addresses=addresses())), "sidecar injected"


# What a redirected pod imports right after the pod GET, in that order, in small steps (a step
# begun just before the answer arrives delays it by that step); the backend's own modules by
# the configured backend (auto: what a fresh pod netns gets). ``decide`` comes first since a
# skipped pod needs it too.
_AFTER_THE_GET = (
    "decide",
    "rules.model",
    "rules.checks",
    "redirect",
    "rules.config",
    "rules.builder",
    "rules.nft_builder",
    "netfilter.routes",
    "netfilter",
)
_IPTC = ("netfilter.owned", "netfilter.xt", "_nf", "netfilter.xtenc", "netfilter.iptc")
_BACKEND_MODULES = {
    "auto": (*_IPTC, "netfilter.detect"),
    "iptc": _IPTC,
    "nft": ("netfilter.nft",),
    "dry-run": ("netfilter.dryrun",),
}


class ImportAhead:
    """``idle`` for the pod GET (``k8s.Client``): while the API server works on our TLS
    handshake and on the request, import what the ADD loads after the answer.

    This process would otherwise sit waiting there (~1-3 ms per ADD against a real
    kube-apiserver), and a redirected pod imports these modules anyway, so the wait hides
    their cost. One module at a time, and only while ``ready()`` says the answer is not there:
    a skipped pod, which needs ``decide`` only, pays for at most one module more than the
    wait covered. A module that fails to import is left for the ADD's own import, which
    reports the failure where it belongs. (``benchmarks/RESULTS.md``, "Imports while the API
    server works".)"""

    __slots__ = ("names",)

    def __init__(self, backend: str) -> None:
        names = _AFTER_THE_GET + _BACKEND_MODULES.get(backend, ())
        self.names = [f"{__package__}.{n}" for n in reversed(names)]  # popped from the end

    def __call__(self, ready: Callable[[], bool]) -> None:
        names = self.names
        while names and not ready():
            try:
                __import__(names.pop())
            except Exception:  # the ADD's own import raises it again, in its place
                continue


def _netns_addresses(netns: str) -> Callable[[], list[str]]:
    def addresses() -> list[str]:
        from .netfilter.routes import netns_addresses

        return netns_addresses(netns)

    return addresses


def cmd_add(args: CmdArgs) -> dict:
    conf, k8s = _setup(args)
    if conf.agent_socket:
        from . import addtiming

        addtiming.agent_socket = conf.agent_socket  # where this ADD's timing goes (direct path)
    result = prev_result(args.netconf)
    reason = _pass_through_reason(conf, k8s)
    if reason:
        log.info("skipping pod", reason=reason)
        return result
    from .k8s import check_pod_ref, get_pod

    # Once, before any request (the agent's included): a name the API cannot hold is code 7.
    check_pod_ref(k8s.pod_namespace, k8s.pod_name)
    if conf.agent_socket:
        from .agent_client import try_agent

        answer = try_agent(conf, args, result)  # None: agent absent/slow/garbled -> direct path
        if answer is not None:
            return answer
    ruleset, reason = plan(
        conf,
        k8s,
        _netns_addresses(args.netns),
        get_pod=lambda ns, name: get_pod(conf, ns, name, ref_checked=True, idle=ImportAhead(conf.netfilter_backend)),
    )
    if ruleset is None:
        log.info("skipping pod", reason=reason)
        return result
    from . import netfilter

    backend = netfilter.apply(args.netns, ruleset, preferred=conf.netfilter_backend)
    log.info("redirect rules committed", netns=args.netns, backend=backend)
    return result


def cmd_check(args: CmdArgs) -> None:
    conf, k8s = _setup(args)
    if _pass_through_reason(conf, k8s):
        return None
    ruleset, reason = plan(conf, k8s, _netns_addresses(args.netns))
    if ruleset is None:
        return None
    from . import netfilter

    diffs = netfilter.check(args.netns, ruleset, preferred=conf.netfilter_backend)
    if diffs:
        raise errors.RulesMismatch(
            f"redirect rules in {args.netns} differ from what ADD would commit", "; ".join(diffs)
        )
    return None


def cmd_del(args: CmdArgs) -> None:
    conf, _ = _setup(args)
    if not args.netns:
        return None
    import os

    if not os.path.exists(args.netns):
        log.debug("netns gone, nothing to remove", netns=args.netns)
        return None
    from . import netfilter

    try:
        netfilter.remove(args.netns, preferred=conf.netfilter_backend)
    except (FileNotFoundError, errors.NotANetns):  # torn down between the check and the open
        return None
    return None


def cmd_status(args: CmdArgs) -> None:
    conf = parse_conf(args.netconf)
    import os

    if not os.access(conf.kubeconfig, os.R_OK):
        raise errors.PluginNotAvailable(
            "plugin kubeconfig missing or unreadable", f"{conf.kubeconfig} (is the istio-cni node agent running?)"
        )
    from . import netfilter

    problem = netfilter.usable(conf.netfilter_backend)
    if problem:
        raise errors.PluginNotAvailable("no usable netfilter backend", problem)
    return None


def cmd_gc(args: CmdArgs) -> None:
    # The plugin keeps no host-side state per attachment (rules live and die with the pod
    # netns), so there is nothing to collect for attachments missing from
    # cni.dev/valid-attachments.
    parse_conf(args.netconf)
    return None


FUNCS = {"ADD": cmd_add, "CHECK": cmd_check, "DEL": cmd_del, "STATUS": cmd_status, "GC": cmd_gc}
