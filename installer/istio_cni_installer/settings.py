"""Installer settings from flags and environment (upstream names accepted), validated up front.

Every setting has one flag and one or more environment names (the first is ours, the rest are
upstream's spellings). A flag beats the environment, the environment beats the default. A bad
value stops start-up with ``SettingError`` naming the setting and the value.
"""

from __future__ import annotations

import argparse
import os
import socket
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from istio_cni import backends
from istio_cni.decide import STATUS_KEY
from istio_cni.log import log
from istio_cni.value import Value

from .cniconfig import load_template
from .k8ssyntax import (
    field_selector as _field_selector,
    label_key as _label_key,
    label_selector as _label_selector,
    label_value as _label_value,
)


class SettingError(ValueError):
    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting, self.value, self.reason = setting, value, reason
        super().__init__(f"invalid setting {setting}={value!r}: {reason}")


# --- converters: (raw string) -> value, raising ValueError with a reason --------------------


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _mode(s: str) -> int:
    try:
        m = int(s, 8)
    except ValueError:
        raise ValueError("expected an octal file mode such as 600") from None
    if not 0 <= m <= 0o777:
        raise ValueError("file mode out of range 000..777")
    return m


def _port(s: str) -> int:
    try:
        p = int(s)
    except ValueError:
        raise ValueError("expected a TCP port number") from None
    if not 0 <= p <= 65535:
        raise ValueError("port out of range 0..65535")
    return p


def _csv(s: str) -> tuple:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _level(s: str) -> str:
    v = s.strip().lower()
    if v not in ("debug", "info", "warn", "warning", "error", "none"):
        raise ValueError("expected one of debug, info, warn, error, none")
    return "warn" if v == "warning" else v


def _path(s: str) -> str:
    if any(c in s for c in "\n\0"):
        raise ValueError("path contains a newline or NUL")
    return s


def _abs_path(s: str) -> str:
    s = _path(s)
    if s and not s.startswith("/"):
        raise ValueError("expected an absolute path")
    return s


def _conf_name(s: str) -> str:
    if "/" in s or s in (".", ".."):
        raise ValueError("expected a file name, not a path")
    return s


def _seconds(s: str) -> float | None:
    if s == "":
        return None
    try:
        v = float(s)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if v <= 0:
        raise ValueError("must be greater than zero")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def conv(s: str) -> str:
        v = s.strip().lower()
        if v not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return v

    return conv


def _str(s: str) -> str:
    return s


def _opt_bool(s: str) -> bool | None:
    """None when empty (unset: another setting decides), else a boolean."""
    return None if s.strip() == "" else _bool(s)


def _exit_code(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise ValueError("expected an exit code 0..255") from None
    if not 0 <= v <= 255:
        raise ValueError("exit code out of range 0..255 (0 = any)")
    return v


def _upstream(name: str) -> tuple:
    """Upstream's name and the 2019 binary's spelling (hyphens after REPAIR_)."""
    return (name, "REPAIR_" + name[len("REPAIR_") :].replace("_", "-"))


# (field, flag, env names, default, converter, help)
SPECS = (
    (
        "mounted_cni_net_dir",
        "--mounted-cni-net-dir",
        ("MOUNTED_CNI_NET_DIR",),
        "/host/etc/cni/net.d",
        _abs_path,
        "host CNI config directory as mounted in this container",
    ),
    (
        "cni_net_dir",
        "--cni-net-dir",
        ("CNI_NET_DIR",),
        "/etc/cni/net.d",
        _abs_path,
        "the same directory as the host sees it (used in templates)",
    ),
    (
        "cni_conf_name",
        "--cni-conf-name",
        ("CNI_CONF_NAME",),
        "",
        _conf_name,
        "config file to modify; empty = the file kubelet would pick (waits for one)",
    ),
    (
        "chained",
        "--chained-cni-plugin",
        ("CHAINED_CNI_PLUGIN",),
        "true",
        _bool,
        "insert into the primary conflist (true) or write a standalone file (false)",
    ),
    (
        "istio_owned_config",
        "--istio-owned-cni-config",
        ("ISTIO_OWNED_CNI_CONFIG",),
        "false",
        _bool,
        "opt-in: write our own copy of the primary list (plus our entry) under the name below",
    ),
    (
        "istio_owned_config_filename",
        "--istio-owned-cni-config-filename",
        ("ISTIO_OWNED_CNI_CONFIG_FILENAME",),
        "02-istio-cni.conflist",
        _conf_name,
        "file name of the Istio-owned conflist (must sort before the primary's)",
    ),
    (
        "conflist_style",
        "--conflist-style",
        ("CONFLIST_STYLE",),
        "preserve",
        _choice("preserve", "seed", "upstream"),
        "file layout: preserve (keep key order and cniVersion), seed (2019 jq layout), "
        "upstream (today's Go layout: sorted keys, .conf wrapped as cniVersion 0.3.1)",
    ),
    (
        "cni_network_config",
        "--cni-network-config",
        ("CNI_NETWORK_CONFIG",),
        "",
        _str,
        "JSON template of our entry with __PLACEHOLDERS__ (default: generated)",
    ),
    (
        "cni_network_config_file",
        "--cni-network-config-file",
        ("CNI_NETWORK_CONFIG_FILE",),
        "",
        _path,
        "file holding that template (wins over --cni-network-config)",
    ),
    (
        "mounted_cni_bin_dir",
        "--mounted-cni-bin-dir",
        ("MOUNTED_CNI_BIN_DIR",),
        "/host/opt/cni/bin",
        _abs_path,
        "host CNI bin directory as mounted here",
    ),
    (
        "cni_bin_dir",
        "--cni-bin-dir",
        ("CNI_BIN_DIR",),
        "/opt/cni/bin",
        _abs_path,
        "the same directory as the host sees it (the launcher execs by this path)",
    ),
    (
        "mounted_secondary_bin_dir",
        "--mounted-secondary-bin-dir",
        ("MOUNTED_SECONDARY_BIN_DIR",),
        "/host/secondary-bin-dir",
        _abs_path,
        "optional second bin dir as mounted here; used when writable",
    ),
    (
        "secondary_bin_dir",
        "--secondary-bin-dir",
        ("SECONDARY_BIN_DIR",),
        "",
        _abs_path,
        "host path of the second bin dir (default: mounted path without /host)",
    ),
    (
        "skip_cni_binaries",
        "--skip-cni-binaries",
        ("SKIP_CNI_BINARIES",),
        "",
        _csv,
        "comma list of binaries not to install (istio-cni)",
    ),
    (
        "update_cni_binaries",
        "--update-cni-binaries",
        ("UPDATE_CNI_BINARIES",),
        "true",
        _bool,
        "replace binaries already present (false: keep an existing istio-cni)",
    ),
    (
        "del_standin_on_uninstall",
        "--del-standin-on-uninstall",
        ("DEL_STANDIN_ON_UNINSTALL",),
        "true",
        _bool,
        "on uninstall, leave a DEL-only istio-cni stand-in in the bin dir(s) so pods set up "
        "with the plugin can still be deleted by runtimes that DEL from their cached config (false: "
        "remove istio-cni entirely)",
    ),
    (
        "plugin_bundle_dir",
        "--plugin-bundle-dir",
        ("PLUGIN_BUNDLE_DIR",),
        "",
        _abs_path,
        "prebuilt plugin bundle (python -m istio_cni_installer.bundle); default: built from this interpreter at start",
    ),
    (
        "cni_agent_run_dir",
        "--cni-agent-run-dir",
        ("CNI_AGENT_RUN_DIR",),
        "/var/run/istio-cni",
        _abs_path,
        "private run dir as the host/plugin sees it (kubeconfig lives here)",
    ),
    (
        "mounted_cni_agent_run_dir",
        "--mounted-cni-agent-run-dir",
        ("MOUNTED_CNI_AGENT_RUN_DIR",),
        "",
        _abs_path,
        "the run dir as mounted here (default: same path)",
    ),
    (
        "kubecfg_file_name",
        "--kubecfg-file-name",
        ("KUBECFG_FILE_NAME", "KUBECONFIG_FILENAME"),
        "istio-cni-kubeconfig",
        _conf_name,
        "kubeconfig file name inside the run dir",
    ),
    ("kubeconfig_mode", "--kubeconfig-mode", ("KUBECONFIG_MODE",), "600", _mode, "octal mode of the kubeconfig"),
    (
        "service_account_dir",
        "--service-account-dir",
        ("SERVICE_ACCOUNT_DIR",),
        "/var/run/secrets/kubernetes.io/serviceaccount",
        _abs_path,
        "projected service-account volume (token, ca.crt); watched for rotation",
    ),
    (
        "kube_ca_file",
        "--kube-ca-file",
        ("KUBE_CA_FILE",),
        "",
        _abs_path,
        "CA embedded in the kubeconfig (default: ca.crt of the service account)",
    ),
    (
        "skip_tls_verify",
        "--skip-tls-verify",
        ("SKIP_TLS_VERIFY",),
        "false",
        _bool,
        "write insecure-skip-tls-verify instead of the CA",
    ),
    (
        "k8s_service_host",
        "--kubernetes-service-host",
        ("KUBERNETES_SERVICE_HOST",),
        "",
        _str,
        "API server address for the kubeconfig",
    ),
    ("k8s_service_port", "--kubernetes-service-port", ("KUBERNETES_SERVICE_PORT",), "443", _port, "API server port"),
    (
        "k8s_service_protocol",
        "--kubernetes-service-protocol",
        ("KUBERNETES_SERVICE_PROTOCOL",),
        "https",
        _choice("https", "http"),
        "API server scheme",
    ),
    ("node_name", "--node-name", ("KUBERNETES_NODE_NAME", "NODE_NAME"), "", _str, "this node (default: hostname)"),
    ("log_level", "--log-level", ("LOG_LEVEL",), "info", _level, "installer log level"),
    (
        "plugin_log_level",
        "--plugin-log-level",
        ("PLUGIN_LOG_LEVEL",),
        "",
        lambda s: "" if s == "" else _level(s),
        "plugin log level written into the entry (default: --log-level)",
    ),
    (
        "exclude_namespaces",
        "--exclude-namespaces",
        ("EXCLUDE_NAMESPACES",),
        "kube-system",
        _csv,
        "comma list of namespaces the plugin never redirects",
    ),
    ("pod_namespace", "--pod-namespace", ("POD_NAMESPACE",), "istio-system", _str, "namespace this installer runs in"),
    ("pod_name", "--pod-name", ("POD_NAME",), "", _str, "this installer's pod (finds its DaemonSet)"),
    (
        "daemonset_name",
        "--daemonset-name",
        ("INSTALLER_DAEMONSET_NAME",),
        "",
        _str,
        "owning DaemonSet (default: from the pod's ownerReferences)",
    ),
    ("native_nftables", "--native-nftables", ("NATIVE_NFTABLES",), "false", _bool, "entry field native_nftables"),
    (
        "netfilter_backend",
        "--netfilter-backend",
        ("NETFILTER_BACKEND",),
        "auto",
        _choice(*backends.CHOICES),
        "entry field netfilter_backend",
    ),
    (
        "lookup_deadline_seconds",
        "--lookup-deadline-seconds",
        ("LOOKUP_DEADLINE_SECONDS",),
        "",
        _seconds,
        "entry field: how long the plugin retries the pod lookup (omitted when unset)",
    ),
    (
        "lookup_retry_interval_seconds",
        "--lookup-retry-interval-seconds",
        ("LOOKUP_RETRY_INTERVAL_SECONDS",),
        "",
        _seconds,
        "entry field: pause between lookups",
    ),
    (
        "bind_address",
        "--bind-address",
        ("BIND_ADDRESS",),
        "0.0.0.0",
        _str,
        "address of the readiness and metrics servers",
    ),
    (
        "readiness_port",
        "--readiness-port",
        ("READINESS_PORT",),
        "8000",
        _port,
        "port of /readyz and /healthz (0 = any free port)",
    ),
    (
        "monitoring_port",
        "--monitoring-port",
        ("MONITORING_PORT",),
        "15014",
        _port,
        "port of /metrics (0 = any free port)",
    ),
    (
        "disable_safe_upgrade",
        "--disable-safe-upgrade",
        ("DISABLE_SAFE_UPGRADE",),
        "false",
        _bool,
        "always clean up on SIGTERM, even when the DaemonSet still targets this node",
    ),
    (
        "shutdown_grace_seconds",
        "--shutdown-grace-seconds",
        ("SHUTDOWN_GRACE_SECONDS",),
        "25",
        _seconds,
        "budget for cleanup after SIGTERM (keep below terminationGracePeriodSeconds)",
    ),
    # Rate limit of drift rewrites. REPAIR_BURST / REPAIR_RATE are the old, deprecated names
    # (REPAIR_* belongs to the repair controller, as upstream): read with a warning.
    (
        "rewrite_burst",
        "--rewrite-burst",
        ("REWRITE_BURST", "REPAIR_BURST"),
        "10",
        lambda s: _positive_int(s),
        "drift rewrites allowed back to back before rate limiting",
    ),
    (
        "rewrite_rate",
        "--rewrite-rate",
        ("REWRITE_RATE", "REPAIR_RATE"),
        "20",
        lambda s: _positive_float(s),
        "sustained drift rewrites per second once the burst is spent",
    ),
    # Node agent and repair controller (istio_cni_installer.agent / .repair).
    (
        "agent_enabled",
        "--agent-enabled",
        ("AGENT_ENABLED",),
        "true",
        _bool,
        "serve the plugin's fast path on <run dir>/agent.sock (pod watch cache)",
    ),
    (
        "agent_kubeconfig",
        "--agent-kubeconfig",
        ("AGENT_KUBECONFIG",),
        "",
        _path,
        "kubeconfig for the agent and repair controller (default: the service account)",
    ),
    (
        "repair_enabled",
        "--repair-enabled",
        ("REPAIR_ENABLED",),
        "true",
        _bool,
        "run the repair controller for pods that started without redirect rules",
    ),
    (
        "repair_mode",
        "--repair-mode",
        ("REPAIR_MODE",),
        "",
        _choice("", "repair", "label", "delete"),
        "repair: commit the rules in the pod netns; label: set the broken-pod label; delete: delete the "
        "pod. Unset: from REPAIR_REPAIR_PODS / REPAIR_LABEL_PODS / REPAIR_DELETE_PODS (at most one true), "
        "else repair",
    ),
    # Upstream's repair settings (cni/pkg/repair; the 2019 binary spelled them REPAIR_LABEL-PODS...).
    (
        "repair_repair_pods",
        "--repair-repair-pods",
        _upstream("REPAIR_REPAIR_PODS"),
        "",
        _opt_bool,
        "upstream mode switch: repair broken pods in place (used when REPAIR_MODE is unset)",
    ),
    (
        "repair_label_pods",
        "--repair-label-pods",
        _upstream("REPAIR_LABEL_PODS"),
        "",
        _opt_bool,
        "upstream mode switch: label broken pods (used when REPAIR_MODE is unset)",
    ),
    (
        "repair_delete_pods",
        "--repair-delete-pods",
        _upstream("REPAIR_DELETE_PODS"),
        "",
        _opt_bool,
        "upstream mode switch: delete broken pods (used when REPAIR_MODE is unset)",
    ),
    (
        "repair_create_events",
        "--repair-create-events",
        _upstream("REPAIR_CREATE_EVENTS"),
        "true",
        _bool,
        "post a Kubernetes Event on each pod the repair controller acts on",
    ),
    (
        "repair_run_as_daemon",
        "--repair-run-as-daemon",
        _upstream("REPAIR_RUN_AS_DAEMON"),
        "true",
        _bool,
        "accepted for upstream compatibility; the controller always runs continuously inside "
        "this program, so false (a one-shot pass) is refused while REPAIR_ENABLED is true",
    ),
    (
        "repair_sidecar_annotation",
        "--repair-sidecar-annotation",
        _upstream("REPAIR_SIDECAR_ANNOTATION"),
        STATUS_KEY,
        _str,
        "only pods with this annotation key are checked (empty: all pods)",
    ),
    (
        "repair_init_container_name",
        "--repair-init-container-name",
        _upstream("REPAIR_INIT_CONTAINER_NAME"),
        "istio-validation",
        _str,
        "init container whose failure marks a broken pod (empty: any)",
    ),
    (
        "repair_init_container_exit_code",
        "--repair-init-container-exit-code",
        _upstream("REPAIR_INIT_CONTAINER_EXIT_CODE"),
        "126",
        _exit_code,
        "its exit code that marks a broken pod (0: any non-success)",
    ),
    (
        "repair_init_container_termination_message",
        "--repair-init-container-termination-message",
        _upstream("REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE"),
        "",
        _str,
        "its termination message (trimmed) that marks a broken pod (empty: any)",
    ),
    (
        "repair_broken_pod_label_key",
        "--repair-broken-pod-label-key",
        _upstream("REPAIR_BROKEN_POD_LABEL_KEY"),
        "cni.istio.io/uninitialized",
        _label_key,
        "label key set on broken pods in label mode",
    ),
    (
        "repair_broken_pod_label_value",
        "--repair-broken-pod-label-value",
        _upstream("REPAIR_BROKEN_POD_LABEL_VALUE"),
        "true",
        _label_value,
        "label value set in label mode",
    ),
    (
        "repair_label_selectors",
        "--repair-label-selectors",
        _upstream("REPAIR_LABEL_SELECTORS"),
        "",
        _label_selector,
        "label selector the repair controller's pod watch adds (server side)",
    ),
    (
        "repair_field_selectors",
        "--repair-field-selectors",
        _upstream("REPAIR_FIELD_SELECTORS"),
        "",
        _field_selector,
        "field selector the repair controller's pod watch adds to spec.nodeName=<node>",
    ),
    (
        "repair_node_name",
        "--repair-node-name",
        _upstream("REPAIR_NODE_NAME"),
        "",
        _str,
        "node whose pods the repair controller watches (default: KUBERNETES_NODE_NAME; unlike "
        "upstream, never all nodes)",
    ),
    (
        "repair_check_netns",
        "--repair-check-netns",
        ("REPAIR_CHECK_NETNS",),
        "false",
        _bool,
        "also inspect each running pod's netns for missing rules (not only istio-validation exit 126)",
    ),
    (
        "startup_taint_key",
        "--startup-taint-key",
        ("STARTUP_TAINT_KEY",),
        "cni.istio.io/not-ready",
        lambda s: "" if s.strip() == "" else _label_key(s.strip()),
        "taint key removed from this node (KUBERNETES_NODE_NAME) once plugin, kubeconfig and conflist "
        "entry are in place; nodes register with it via kubelet registerWithTaints (empty: off)",
    ),
    (
        "host_proc_dir",
        "--host-proc-dir",
        ("HOST_PROC_DIR",),
        "/proc",
        _abs_path,
        "the host's /proc as mounted here (repair finds pod netns through it; hostPID or a mount)",
    ),
)


DEPRECATED = {"REPAIR_BURST": "REWRITE_BURST", "REPAIR_RATE": "REWRITE_RATE"}
_MODE_SWITCHES = (("repair_repair_pods", "repair"), ("repair_label_pods", "label"), ("repair_delete_pods", "delete"))


def _resolve_repair(values: dict, source: dict) -> None:
    """REPAIR_MODE from upstream's three switches when not given; REPAIR_RUN_AS_DAEMON checked."""
    if not values["repair_mode"]:
        on = [(source[f], mode) for f, mode in _MODE_SWITCHES if values[f]]
        if len(on) > 1:
            raise SettingError(
                " and ".join(n for n, _ in on),
                "true",
                "only one repair mode can be on: set exactly one of them (or REPAIR_MODE)",
            )
        if on:
            values["repair_mode"] = on[0][1]
        elif values["repair_enabled"] and all(values[f] is False for f, _ in _MODE_SWITCHES):
            # Upstream's controller does nothing with all three off; say so instead of idling.
            log.warning(
                "REPAIR_REPAIR_PODS, REPAIR_LABEL_PODS and REPAIR_DELETE_PODS are all false: "
                "repair controller off (set one, or REPAIR_MODE)"
            )
            values["repair_enabled"] = False
            values["repair_mode"] = "repair"
        else:
            values["repair_mode"] = "repair"
    if values["repair_enabled"] and not values["repair_run_as_daemon"]:
        raise SettingError(
            source["repair_run_as_daemon"],
            "false",
            "the one-shot repair pass is not supported: the repair controller runs "
            "continuously inside the node program; remove the setting, or set "
            "REPAIR_ENABLED=false to turn repair off",
        )


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if v < 1:
        raise ValueError("must be at least 1")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError("expected a number") from None
    if not v > 0:
        raise ValueError("must be greater than zero")
    return v


class Settings(Value):
    __slots__ = tuple(s[0] for s in SPECS)
    # Each field's type, what its converter in SPECS returns (same names, same order: a unit
    # test holds the two together), for the type checker; annotations cost nothing at run time.
    mounted_cni_net_dir: str
    cni_net_dir: str
    cni_conf_name: str
    chained: bool
    istio_owned_config: bool
    istio_owned_config_filename: str
    conflist_style: str
    cni_network_config: str
    cni_network_config_file: str
    mounted_cni_bin_dir: str
    cni_bin_dir: str
    mounted_secondary_bin_dir: str
    secondary_bin_dir: str
    skip_cni_binaries: tuple[str, ...]
    update_cni_binaries: bool
    del_standin_on_uninstall: bool
    plugin_bundle_dir: str
    cni_agent_run_dir: str
    mounted_cni_agent_run_dir: str
    kubecfg_file_name: str
    kubeconfig_mode: int
    service_account_dir: str
    kube_ca_file: str
    skip_tls_verify: bool
    k8s_service_host: str
    k8s_service_port: int
    k8s_service_protocol: str
    node_name: str
    log_level: str
    plugin_log_level: str
    exclude_namespaces: tuple[str, ...]
    pod_namespace: str
    pod_name: str
    daemonset_name: str
    native_nftables: bool
    netfilter_backend: str
    lookup_deadline_seconds: float | None
    lookup_retry_interval_seconds: float | None
    bind_address: str
    readiness_port: int
    monitoring_port: int
    disable_safe_upgrade: bool
    shutdown_grace_seconds: float | None
    rewrite_burst: int
    rewrite_rate: float
    agent_enabled: bool
    agent_kubeconfig: str
    repair_enabled: bool
    repair_mode: str
    repair_repair_pods: bool | None
    repair_label_pods: bool | None
    repair_delete_pods: bool | None
    repair_create_events: bool
    repair_run_as_daemon: bool
    repair_sidecar_annotation: str
    repair_init_container_name: str
    repair_init_container_exit_code: int
    repair_init_container_termination_message: str
    repair_broken_pod_label_key: str
    repair_broken_pod_label_value: str
    repair_label_selectors: str
    repair_field_selectors: str
    repair_node_name: str
    repair_check_netns: bool
    startup_taint_key: str
    host_proc_dir: str

    @property
    def run_dir(self) -> str:
        """Where this process writes the run dir (the mount), vs ``cni_agent_run_dir`` (host)."""
        return self.mounted_cni_agent_run_dir or self.cni_agent_run_dir

    @property
    def kubeconfig_host_path(self) -> str:
        return f"{self.cni_agent_run_dir.rstrip('/')}/{self.kubecfg_file_name}"

    @property
    def effective_plugin_log_level(self) -> str:
        return self.plugin_log_level or self.log_level

    def bin_dirs(self) -> list[tuple[str, str]]:
        """(mounted path, host path) of every bin dir to install into."""
        dirs = [(self.mounted_cni_bin_dir, self.cni_bin_dir)]
        sec = self.mounted_secondary_bin_dir
        if sec and os.path.isdir(sec) and os.access(sec, os.W_OK) and sec != self.mounted_cni_bin_dir:
            host = self.secondary_bin_dir or (sec[len("/host") :] if sec.startswith("/host/") else sec)
            dirs.append((sec, host))
        return dirs


def _env_help(env: tuple) -> str:
    return "env " + " / ".join(env)


class _HelpFormatter(argparse.HelpFormatter):
    """Never wraps inside a hyphenated name (REPAIR_LABEL-PODS must stay greppable)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install-cni",
        formatter_class=_HelpFormatter,
        description="Install the istio-cni plugin on this node and keep it installed: deploys the "
        "self-contained plugin bundle into the CNI bin dir(s), writes the plugin kubeconfig into "
        "the private run dir, inserts the istio-cni entry into the primary CNI conflist, repairs "
        "drift within milliseconds (inotify), serves /readyz /healthz /metrics, and on SIGTERM "
        "removes everything unless the DaemonSet still targets this node (upgrade/restart).",
        epilog="Every flag can also be set through the environment variable(s) named in its help; "
        "a flag wins over the environment.",
    )
    for field, flag, env, default, _conv, text in SPECS:
        p.add_argument(
            flag, dest=field, default=None, metavar="VALUE", help=f"{text} [{_env_help(env)}; default {default!r}]"
        )
    return p


def parse(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    if env is None:
        env = os.environ
    ns = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for field, flag, names, default, conv, _text in SPECS:
        raw, name = getattr(ns, field), flag
        if raw is None:
            raw, name = default, names[0]
            for n in names:
                if n in env:
                    raw, name = env[n], n
                    break
        try:
            values[field] = conv(raw)
        except ValueError as e:
            raise SettingError(name, raw, str(e)) from None
        source[field] = name
        if name in DEPRECATED:
            log.warning("deprecated setting name", name=name, use=DEPRECATED[name])
    _resolve_repair(values, source)
    if not values["node_name"]:
        values["node_name"] = socket.gethostname()
    if values["cni_network_config"] or values["cni_network_config_file"]:
        # validated here so a bad template stops start-up
        try:
            load_template(values["cni_network_config"], values["cni_network_config_file"])
        except ValueError as e:
            which = "CNI_NETWORK_CONFIG_FILE" if values["cni_network_config_file"] else "CNI_NETWORK_CONFIG"
            raise SettingError(which, values[which.lower()][:80], str(e)) from None
    if not values["chained"] and values["istio_owned_config"]:
        raise SettingError("ISTIO_OWNED_CNI_CONFIG", "true", "needs CHAINED_CNI_PLUGIN=true")
    return Settings(**values)
