"""Netconf -> ``PluginConf``: both dialects the installers have ever written.

* 2019 (istio/cni): ``log_level`` and ``kubernetes: {kubeconfig, cni_bin_dir,
  exclude_namespaces, intercept_type, k8s_api_root, node_name}``; the kubeconfig lived in
  the shared net dir.
* Today's upstream: ``plugin_log_level``, ``cni_agent_run_dir`` (kubeconfig, agent socket
  and log socket are derived from it), ``exclude_namespaces``, ``pod_namespace``,
  ``native_nftables``, ``ambient_enabled`` (refused: ambient is out of scope).
* Ours: ``netfilter_backend``, ``lookup_deadline_seconds``, ``lookup_retry_interval_seconds``,
  ``agent_timeout_seconds``.

Unknown keys are ignored, as the CNI spec requires of plugins. A present key with a
wrong type is a code-7 error naming the key.
"""

from __future__ import annotations

from . import errors
from .backends import CHOICES as BACKENDS
from .value import Value
from .versions import SUPPORTED_VERSIONS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_RUN_DIR = "/var/run/istio-cni"
KUBECONFIG_NAME = "istio-cni-kubeconfig"
AGENT_SOCKET_NAME = "agent.sock"
# Upstream: 30 attempts, 1 s apart (cni/pkg/plugin/plugin.go podRetrievalMaxRetries).
DEFAULT_LOOKUP_ATTEMPTS = 30
DEFAULT_RETRY_INTERVAL = 1.0
SELF_POD_PREFIX = "istio-cni-node-"


class PluginConf(Value):
    """The plugin's typed configuration (the netconf's keys this plugin reads)."""

    __slots__ = (
        "cni_version",
        "name",
        "log_level",
        "kubeconfig",
        "run_dir",
        "exclude_namespaces",
        "pod_namespace",
        "netfilter_backend",
        "lookup_attempts",
        "retry_interval",
        "agent_timeout",
        "agent_socket",
        "node_name",
        "k8s_api_root",
    )
    cni_version: str
    name: str
    log_level: str
    kubeconfig: str
    run_dir: str
    exclude_namespaces: tuple[str, ...]
    pod_namespace: str
    netfilter_backend: str
    lookup_attempts: int
    retry_interval: float
    agent_timeout: float
    agent_socket: str
    node_name: str
    k8s_api_root: str


def _get(conf: dict, key: str, kind: type, default: Any, where: str = "") -> Any:
    if key not in conf or conf[key] is None:
        return default
    val = conf[key]
    if kind is float and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if not isinstance(val, kind) or (kind is not bool and isinstance(val, bool)):
        name = f"{where}{key}"
        raise errors.InvalidNetworkConfig(f"network config key {name!r} has the wrong type", f"{name}={val!r}")
    return val


def _str_list(conf: dict, key: str, where: str = "") -> tuple[str, ...]:
    val = conf.get(key)
    if val is None:
        return ()
    if isinstance(val, str):  # tolerate a comma list, as the env var form
        return tuple(s.strip() for s in val.split(",") if s.strip())
    if not isinstance(val, list) or not all(isinstance(s, str) for s in val):
        raise errors.InvalidNetworkConfig(
            f"network config key {where + key!r} must be a list of strings", f"{where}{key}={val!r}"
        )
    return tuple(val)


def _path(conf: dict, key: str, where: str = "") -> str:
    """A file/dir path from the netconf: a string without NUL (the kernel cannot take one)."""
    val = _get(conf, key, str, "", where) or ""
    if "\0" in val:
        raise errors.InvalidNetworkConfig(f"network config key {where + key!r} holds a NUL character", "")
    return val


def _prev_result_problem(prev: object) -> str:
    """Where ``prevResult`` has a shape ``versions.convert_result`` cannot read ("" if none).

    The CNI spec fixes the result's shape; only the parts we read or convert are checked,
    everything else is handed on untouched."""
    if not prev or not isinstance(prev, dict):
        return ""  # absent (falsy) or not an object: plugin.prev_result reports it
    ver = prev.get("cniVersion")
    if ver is not None and not isinstance(ver, str):
        return "prevResult.cniVersion must be a string"
    if ver and ver not in SUPPORTED_VERSIONS:
        return "prevResult.cniVersion is not a CNI version this plugin knows"
    for key, fields in (("ips", ("address", "version")), ("routes", ("dst",))):
        items = prev.get(key)
        if not items:
            continue
        if not isinstance(items, list):
            return f"prevResult.{key} must be a list"
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                return f"prevResult.{key}[{i}] must be an object"
            for f in fields:
                if item.get(f) is not None and not isinstance(item[f], str):
                    return f"prevResult.{key}[{i}].{f} must be a string"
    for key in ("ip4", "ip6"):  # the 0.1/0.2 shape
        block = prev.get(key)
        if not block:
            continue
        if not isinstance(block, dict):
            return f"prevResult.{key} must be an object"
        if block.get("ip") is not None and not isinstance(block["ip"], str):
            return f"prevResult.{key}.ip must be a string"
        routes = block.get("routes")
        if routes and not (
            isinstance(routes, list)
            and all(isinstance(r, dict) and (r.get("dst") is None or isinstance(r["dst"], str)) for r in routes)
        ):
            return f"prevResult.{key}.routes must be a list of objects with string dst"
    return ""


def parse_conf(conf: dict) -> PluginConf:
    if _get(conf, "ambient_enabled", bool, False):
        raise errors.InvalidNetworkConfig(
            "ambient mode is not supported by this plugin",
            "ambient_enabled=true; deploy upstream istio-cni for ambient, or set it to false",
        )
    k8s = conf.get("kubernetes")
    k8s = {} if k8s is None else k8s
    if not isinstance(k8s, dict):
        raise errors.InvalidNetworkConfig("network config key 'kubernetes' must be an object", repr(k8s))
    run_dir = _path(conf, "cni_agent_run_dir")
    kubeconfig = _path(k8s, "kubeconfig", "kubernetes.")
    if not kubeconfig:
        kubeconfig = f"{run_dir or DEFAULT_RUN_DIR}/{KUBECONFIG_NAME}"
    problem = _prev_result_problem(conf.get("prevResult"))
    if problem:
        raise errors.InvalidNetworkConfig("network config key 'prevResult' is malformed", problem)
    excl = _str_list(conf, "exclude_namespaces") + _str_list(k8s, "exclude_namespaces", "kubernetes.")
    backend = _get(conf, "netfilter_backend", str, "auto")
    if _get(conf, "native_nftables", bool, False) and backend == "auto":
        backend = "nft"
    if backend not in BACKENDS:
        raise errors.InvalidNetworkConfig(
            "network config key 'netfilter_backend' is invalid",
            f"netfilter_backend={backend!r}; want one of {', '.join(BACKENDS)}",
        )
    deadline = _get(conf, "lookup_deadline_seconds", float, None)
    interval = _get(conf, "lookup_retry_interval_seconds", float, DEFAULT_RETRY_INTERVAL)
    if interval <= 0:
        raise errors.InvalidNetworkConfig(
            "lookup_retry_interval_seconds must be positive", f"lookup_retry_interval_seconds={interval}"
        )
    if deadline is not None and deadline < 0:
        raise errors.InvalidNetworkConfig(
            "lookup_deadline_seconds must not be negative", f"lookup_deadline_seconds={deadline}"
        )
    attempts = DEFAULT_LOOKUP_ATTEMPTS if deadline is None else max(1, int(deadline / interval) + 1)
    level = _get(conf, "plugin_log_level", str, "") or _get(conf, "log_level", str, "") or "info"
    agent_timeout = _get(conf, "agent_timeout_seconds", float, 2.0)
    return PluginConf(
        cni_version=conf.get("cniVersion") or "0.1.0",
        name=_get(conf, "name", str, ""),
        log_level=level,
        kubeconfig=kubeconfig,
        run_dir=run_dir,
        exclude_namespaces=tuple(dict.fromkeys(excl)),
        pod_namespace=_get(conf, "pod_namespace", str, ""),
        netfilter_backend=backend,
        lookup_attempts=attempts,
        retry_interval=interval,
        agent_timeout=agent_timeout,
        agent_socket=f"{run_dir}/{AGENT_SOCKET_NAME}" if run_dir else "",
        node_name=_get(k8s, "node_name", str, "", "kubernetes."),
        k8s_api_root=_get(k8s, "k8s_api_root", str, "", "kubernetes."),
    )


class K8sArgs(Value):
    """The Kubernetes keys of ``CNI_ARGS`` (as kubelet/containerd send them)."""

    __slots__ = ("pod_namespace", "pod_name", "infra_container_id", "pod_uid")
    pod_namespace: str
    pod_name: str
    infra_container_id: str
    pod_uid: str


_K8S_KEYS = {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IgnoreUnknown"}


# libcni's UnmarshallableBool (``IgnoreUnknown``): these spellings, case-insensitively, else an error.
_ARG_BOOLS = {"1": True, "true": True, "0": False, "false": False}


def parse_k8s_args(raw: str) -> K8sArgs:
    """Parse ``CNI_ARGS`` like libcni's ``types.LoadArgs`` into ``K8sArgs`` (code 7 on error).

    Pair splitting is ``_fastpath.parse_cni_args``; here, as in LoadArgs: ``IgnoreUnknown``
    must be 1/true/0/false (any case), and unknown keys are an error unless it is true.
    """
    from ._fastpath import parse_cni_args

    try:
        pairs = parse_cni_args(raw)
    except ValueError as e:
        raise errors.InvalidNetworkConfig("invalid CNI_ARGS", str(e)) from None
    values: dict[str, str] = {}
    unknown: list[str] = []
    ignore: bool | None = False
    for key, value in pairs:  # in order, as LoadArgs sets each field
        if key == "IgnoreUnknown":
            ignore = _ARG_BOOLS.get(value.lower())
            if ignore is None:
                raise errors.InvalidNetworkConfig("invalid CNI_ARGS", "IgnoreUnknown must be 1, true, 0 or false")
        elif key in _K8S_KEYS:
            values[key] = value
        elif key not in unknown:
            unknown.append(key)
    if unknown and not ignore:
        shown = ", ".join(k if len(k) <= 64 else k[:64] + "..." for k in sorted(unknown)[:10])
        raise errors.InvalidNetworkConfig("unknown keys in CNI_ARGS (set IgnoreUnknown=1 to allow them)", shown)
    return K8sArgs(
        pod_namespace=values.get("K8S_POD_NAMESPACE", ""),
        pod_name=values.get("K8S_POD_NAME", ""),
        infra_container_id=values.get("K8S_POD_INFRA_CONTAINER_ID", ""),
        pod_uid=values.get("K8S_POD_UID", ""),
    )
