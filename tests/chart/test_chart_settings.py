"""The environment the chart gives the node program is what the installer accepts and means.

The installer's own parser (istio_cni_installer.settings.parse) reads the rendered environment,
so a renamed setting or a value it would refuse fails here, not on a node.
"""

from __future__ import annotations

import pytest
from support.chartlib import chart_schema

from istio_cni import backends
from istio_cni_installer import settings as installer_settings

DOWNWARD = {"spec.nodeName": "node-a", "metadata.name": "istio-cni-node-x7k2p",
            "metadata.namespace": "istio-system"}


def container_env(m) -> dict:
    """The environment kubelet would give the container: envFrom first, then env entries."""
    env = dict(m.config)
    for e in m.container["env"]:
        env[e["name"]] = e["value"] if "value" in e else DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def installer_view(m):
    return installer_settings.parse([], env=container_env(m))


def known_env_names() -> set:
    return {name for spec in installer_settings.SPECS for name in spec[2]}


@pytest.mark.parametrize("values", [
    {}, {"repair": {"mode": "label", "checkNetns": True}}, {"repair": {"enabled": False}},
    {"agent": {"enabled": False}, "repair": {"mode": "delete"}, "safeUpgrade": False},
    {"podLookup": {"deadlineSeconds": 5, "retryIntervalSeconds": 0.5}},
])
def test_every_variable_the_chart_sets_is_one_the_installer_reads(render, values):
    unknown = set(container_env(render(values))) - known_env_names()
    assert not unknown, f"the chart sets variables the installer does not read: {sorted(unknown)}"


def test_configmap_values_are_strings(default_manifests):
    assert all(isinstance(v, str) for v in default_manifests.config.values())


def test_installer_accepts_the_default_environment(default_manifests):
    s = installer_view(default_manifests)
    assert s.cni_bin_dir == "/opt/cni/bin" and s.cni_net_dir == "/etc/cni/net.d"
    assert s.chained is True and s.cni_conf_name == ""
    assert s.exclude_namespaces == ("istio-system",)
    assert s.netfilter_backend == "auto" and s.native_nftables is False
    assert s.log_level == "info"
    assert s.node_name == "node-a" and s.pod_namespace == "istio-system"
    assert s.lookup_deadline_seconds is None and s.lookup_retry_interval_seconds is None
    assert s.disable_safe_upgrade is False
    assert s.istio_owned_config is False and s.istio_owned_config_filename == "02-istio-cni.conflist"


def test_installer_paths_match_the_daemonset_mounts(default_manifests):
    s = installer_view(default_manifests)
    m = default_manifests
    mounts = {v["name"]: v["mountPath"] for v in m.container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in m.daemonset["spec"]["template"]["spec"]["volumes"]
               if "hostPath" in v}
    assert s.mounted_cni_bin_dir == mounts["cni-bin-dir"] and s.cni_bin_dir == volumes["cni-bin-dir"]
    assert s.mounted_cni_net_dir == mounts["cni-net-dir"] and s.cni_net_dir == volumes["cni-net-dir"]
    # the run dir is mounted at its host path: the paths the installer writes hold on both sides
    assert s.run_dir == mounts["cni-run-dir"] == volumes["cni-run-dir"] == s.cni_agent_run_dir
    assert s.service_account_dir == "/var/run/secrets/kubernetes.io/serviceaccount"


def test_installer_ports_and_shutdown_match_the_daemonset(render):
    m = render({"healthProbes": {"port": 8100}, "metrics": {"port": 9100},
                "terminationGracePeriodSeconds": 45})
    s = installer_view(m)
    ports = {p["name"]: p["containerPort"] for p in m.container["ports"]}
    assert s.readiness_port == ports["health"] == 8100
    assert s.monitoring_port == ports["metrics"] == 9100
    assert s.daemonset_name == m.daemonset["metadata"]["name"]
    assert s.shutdown_grace_seconds < m.daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("grace", [1, 5, 6, 30])
def test_shutdown_budget_stays_inside_the_grace_period(render, grace):
    s = installer_view(render({"terminationGracePeriodSeconds": grace}))
    assert 0 < s.shutdown_grace_seconds <= max(grace - 5, 1)


@pytest.mark.parametrize("backend, plugin_value, native", [
    ("auto", "auto", False), ("legacy", "iptc", False), ("nft", "nft", True), ("restore", "restore", False),
])
def test_netfilter_backend_maps_to_the_plugin_netconf_value(render, backend, plugin_value, native):
    s = installer_view(render({"netfilterBackend": backend}))
    assert (s.netfilter_backend, s.native_nftables) == (plugin_value, native)


def test_chart_backend_enum_is_the_plugin_vocabulary_through_its_aliases(render):
    # The chart cannot import istio_cni.backends: its enum and its alias mapping (configmap
    # template) are held to the module here, value by value.
    enum = chart_schema()["properties"]["netfilterBackend"]["enum"]
    assert tuple(enum) == backends.CHART_CHOICES
    for value in enum:
        mapped = backends.from_chart(value)
        assert mapped in backends.CHOICES
        assert installer_view(render({"netfilterBackend": value})).netfilter_backend == mapped


def test_plugin_settings_reach_the_installer(render):
    s = installer_view(render({
        "logLevel": "debug", "excludeNamespaces": ["istio-system", "kube-system"],
        "podLookup": {"deadlineSeconds": 12.5, "retryIntervalSeconds": 0.25},
        "cniConfFileName": "10-calico.conflist", "istioOwnedCNIConfig": True,
        "istioOwnedCNIConfigFileName": "01-istio.conflist", "safeUpgrade": False,
        "cniAgentRunDir": "/run/istio-cni"}))
    assert s.log_level == "debug" and s.effective_plugin_log_level == "debug"
    assert s.exclude_namespaces == ("istio-system", "kube-system")
    assert (s.lookup_deadline_seconds, s.lookup_retry_interval_seconds) == (12.5, 0.25)
    assert s.cni_conf_name == "10-calico.conflist"
    assert (s.istio_owned_config, s.istio_owned_config_filename) == (True, "01-istio.conflist")
    assert s.disable_safe_upgrade is True
    assert s.cni_agent_run_dir == "/run/istio-cni"


def test_empty_exclude_list_is_passed_as_empty(render):
    assert installer_view(render({"excludeNamespaces": []})).exclude_namespaces == ()


@pytest.mark.parametrize("platform", ["gke", "k3s", "microk8s", "openshift"])
def test_installer_accepts_every_preset(render, platform):
    s = installer_view(render({"platform": platform}))
    assert s.cni_bin_dir.startswith("/") and s.cni_net_dir.startswith("/")
    assert s.chained is (platform != "openshift")


def test_repair_settings_are_passed_with_upstream_names(render):
    m = render({"repair": {"mode": "label", "initContainerName": "check", "initContainerExitCode": 7,
                           "brokenPodLabelKey": "example.com/broken", "brokenPodLabelValue": "yes",
                           "labelSelectors": "app=x", "fieldSelectors": "status.phase=Pending",
                           "initContainerTerminationMessage": "no rules"}})
    env = container_env(m)
    assert {k: env[k] for k in sorted(env) if k.startswith("REPAIR_")} == {
        "REPAIR_BROKEN_POD_LABEL_KEY": "example.com/broken", "REPAIR_BROKEN_POD_LABEL_VALUE": "yes",
        "REPAIR_CHECK_NETNS": "false", "REPAIR_CREATE_EVENTS": "true", "REPAIR_DELETE_PODS": "false",
        "REPAIR_ENABLED": "true",
        "REPAIR_FIELD_SELECTORS": "status.phase=Pending", "REPAIR_INIT_CONTAINER_EXIT_CODE": "7",
        "REPAIR_INIT_CONTAINER_NAME": "check", "REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE": "no rules",
        "REPAIR_LABEL_PODS": "true", "REPAIR_LABEL_SELECTORS": "app=x", "REPAIR_NODE_NAME": "node-a",
        "REPAIR_REPAIR_PODS": "false", "REPAIR_RUN_AS_DAEMON": "true",
        "REPAIR_SIDECAR_ANNOTATION": "sidecar.istio.io/status",
    }


def repair_view(m):
    """What the repair controller gets: chart env -> installer settings -> RepairSettings."""
    from istio_cni_installer.agent.services import repair_settings

    s = installer_view(m)
    return s, repair_settings(s, s.node_name)


def test_default_repair_settings_reach_the_controller(default_manifests):
    s, rs = repair_view(default_manifests)
    assert s.repair_enabled is True and s.agent_enabled is True
    assert rs.mode == "repair" and rs.node_name == "node-a"
    assert rs.proc_root == "/host/proc" == {v["name"]: v["mountPath"]
                                           for v in default_manifests.container["volumeMounts"]}["host-proc"]
    assert (rs.sidecar_annotation, rs.init_container_name, rs.exit_code, rs.termination_message) == (
        "sidecar.istio.io/status", "istio-validation", 126, "")
    assert (rs.label_key, rs.label_value, rs.create_events, rs.check_netns) == (
        "cni.istio.io/uninitialized", "true", True, False)
    assert (rs.label_selectors, rs.field_selectors) == ("", "")


def test_every_repair_value_reaches_the_controller(render):
    _, rs = repair_view(render({"repair": {
        "mode": "label", "initContainerName": "check", "initContainerExitCode": 7,
        "brokenPodLabelKey": "example.com/broken", "brokenPodLabelValue": "yes", "createEvents": False,
        "labelSelectors": "app in (a,b),tier!=db", "fieldSelectors": "status.phase=Pending",
        "initContainerTerminationMessage": "no rules", "sidecarAnnotation": "example.com/injected",
        "checkNetns": True}}))
    assert rs.mode == "label" and rs.check_netns is True and rs.proc_root == "/host/proc"
    assert (rs.init_container_name, rs.exit_code, rs.termination_message) == ("check", 7, "no rules")
    assert (rs.label_key, rs.label_value, rs.create_events) == ("example.com/broken", "yes", False)
    assert (rs.label_selectors, rs.field_selectors) == ("app in (a,b),tier!=db", "status.phase=Pending")
    assert rs.sidecar_annotation == "example.com/injected"


@pytest.mark.parametrize("values, mode", [
    ({"mode": "delete"}, "delete"), ({"mode": "label"}, "label"), ({"mode": "repair"}, "repair"),
    ({"labelPods": True}, "label"), ({"deletePods": True, "labelPods": True}, "delete"),
])
def test_the_upstream_mode_switches_select_the_installer_mode(render, values, mode):
    s, rs = repair_view(render({"repair": values}))
    assert s.repair_mode == rs.mode == mode


def test_repair_disabled_is_disabled_for_the_installer(render):
    s = installer_view(render({"repair": {"enabled": False, "checkNetns": True}}))
    assert s.repair_enabled is False
