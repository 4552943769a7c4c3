"""`helm template` of the default values and of each setting that changes the manifests."""

from __future__ import annotations

import pytest
from support.chartlib import PLATFORMS

NODE_CAPS = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]


def mounts(m) -> dict:
    return {v["name"]: v["mountPath"] for v in m.container["volumeMounts"]}


def host_paths(m) -> dict:
    return {v["name"]: v["hostPath"]["path"] for v in m.daemonset["spec"]["template"]["spec"]["volumes"]
            if "hostPath" in v}


def test_default_render_has_exactly_the_expected_objects(default_manifests):
    assert sorted(default_manifests.names()) == sorted([
        "ServiceAccount/istio-cni", "ConfigMap/istio-cni-config",
        "ClusterRole/istio-cni", "ClusterRoleBinding/istio-cni",
        "ClusterRole/istio-cni-repair", "ClusterRoleBinding/istio-cni-repair",
        "Role/istio-cni-upgrade-check", "RoleBinding/istio-cni-upgrade-check",
        "DaemonSet/istio-cni-node",
    ])
    for obj in default_manifests:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "istio-system", obj["metadata"]


def test_default_daemonset_schedules_everywhere_first(default_manifests):
    pod = default_manifests.daemonset["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every taint, every effect
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["serviceAccountName"] == "istio-cni"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert "hostNetwork" not in pod
    strategy = default_manifests.daemonset["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_default_container_image_command_probes_ports(default_manifests):
    c = default_manifests.container
    assert c["image"] == "ghcr.io/istio-cni-py/install-cni:0.1.0"  # tag defaults to appVersion
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["install-cni"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8000, "metrics": 15014}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["envFrom"] == [{"configMapRef": {"name": "istio-cni-config"}}]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "100Mi"}}


def test_default_pod_is_never_meshed_and_is_scraped(default_manifests):
    meta = default_manifests.daemonset["spec"]["template"]["metadata"]
    assert meta["labels"]["sidecar.istio.io/inject"] == "false"
    assert meta["labels"]["istio.io/dataplane-mode"] == "none"
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    assert meta["annotations"]["prometheus.io/port"] == "15014"
    assert len(meta["annotations"]["checksum/config"]) == 64
    selector = default_manifests.daemonset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= meta["labels"].items()


def test_default_security_context_is_minimal(default_manifests):
    sc = default_manifests.container["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0
    assert sc["capabilities"]["drop"] == ["ALL"]
    # agent on + repair in place (the defaults) need exactly these
    assert sc["capabilities"]["add"] == NODE_CAPS + ["SYS_PTRACE"]
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert "seLinuxOptions" not in sc


def test_default_host_paths_and_mounts(default_manifests):
    assert host_paths(default_manifests) == {
        "cni-bin-dir": "/opt/cni/bin", "cni-net-dir": "/etc/cni/net.d",
        "cni-run-dir": "/var/run/istio-cni", "cni-netns-dir": "/var/run/netns", "host-proc": "/proc",
    }
    m = mounts(default_manifests)
    assert m["cni-bin-dir"] == "/host/opt/cni/bin"
    assert m["cni-net-dir"] == "/host/etc/cni/net.d"
    assert m["cni-run-dir"] == "/var/run/istio-cni"
    assert m["tmp"] == "/tmp"  # the root filesystem is read-only
    by_name = {v["name"]: v for v in default_manifests.container["volumeMounts"]}
    assert by_name["host-proc"]["readOnly"] is True
    assert by_name["cni-netns-dir"]["mountPropagation"] == "HostToContainer"


@pytest.mark.parametrize("agent, mode, expected_caps, proc_mounted", [
    (True, "repair", NODE_CAPS + ["SYS_PTRACE"], True),
    (True, "label", NODE_CAPS, False),
    (False, "repair", NODE_CAPS + ["SYS_PTRACE"], True),
    (False, "delete", None, False),
    (False, "label", None, False),
])
def test_capabilities_follow_the_enabled_features(render, agent, mode, expected_caps, proc_mounted):
    m = render({"agent": {"enabled": agent}, "repair": {"mode": mode}})
    caps = m.container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert caps.get("add") == expected_caps
    assert ("host-proc" in mounts(m)) is proc_mounted
    assert ("cni-netns-dir" in mounts(m)) is agent
    # the installer is told where host /proc is exactly when it is mounted
    assert m.config.get("HOST_PROC_DIR") == (mounts(m)["host-proc"] if proc_mounted else None)


@pytest.mark.parametrize("agent, mode", [(False, "label"), (False, "delete"), (True, "label")])
def test_check_netns_mounts_host_proc_and_adds_what_netns_access_needs(render, agent, mode):
    m = render({"agent": {"enabled": agent}, "repair": {"mode": mode, "checkNetns": True}})
    assert m.container["securityContext"]["capabilities"]["add"] == NODE_CAPS + ["SYS_PTRACE"]
    assert mounts(m)["host-proc"] == m.config["HOST_PROC_DIR"] == "/host/proc"
    assert m.config["REPAIR_CHECK_NETNS"] == "true"
    off = render({"agent": {"enabled": agent}, "repair": {"mode": mode, "enabled": False, "checkNetns": True}})
    assert "host-proc" not in mounts(off) and "HOST_PROC_DIR" not in off.config


def test_default_resources_give_the_node_container_cpu_and_memory_shares(default_manifests):
    # The node agent answers ADDs: without a CPU request it starves under bursts of pod starts.
    requests = default_manifests.container["resources"]["requests"]
    assert requests["cpu"] == "100m" and requests["memory"] == "100Mi"


def test_repair_disabled_needs_no_capability_from_repair(render):
    m = render({"agent": {"enabled": False}, "repair": {"enabled": False}})
    assert "add" not in m.container["securityContext"]["capabilities"]
    assert "ClusterRole/istio-cni-repair" not in m.names()
    assert m.config["REPAIR_ENABLED"] == "false"


def test_extra_capabilities_are_appended_once(render):
    m = render({"securityContext": {"extraCapabilities": ["DAC_OVERRIDE", "NET_ADMIN"]}})
    assert m.container["securityContext"]["capabilities"]["add"] == NODE_CAPS + ["SYS_PTRACE", "DAC_OVERRIDE"]


def test_privileged_replaces_the_capability_list(render):
    sc = render({"securityContext": {"privileged": True}}).container["securityContext"]
    assert sc["privileged"] is True
    assert "capabilities" not in sc
    assert "allowPrivilegeEscalation" not in sc  # the API rejects false together with privileged


def test_apparmor_uses_the_annotation_before_kubernetes_1_30(render):
    m = render(None, kube_version="v1.29.4")
    annotations = m.daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/install-cni"] == "unconfined"
    assert "appArmorProfile" not in m.container["securityContext"]
    new = render(None, kube_version="v1.30.0")
    assert not any("apparmor" in k for k in new.daemonset["spec"]["template"]["metadata"]["annotations"])


def test_seccomp_and_selinux_are_passed_through(render):
    sc = render({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                                     "seLinuxOptions": {"type": "container_t", "level": "s0"}}}
                ).container["securityContext"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["seLinuxOptions"] == {"type": "container_t", "level": "s0"}


@pytest.mark.parametrize("platform, bin_dir, conf_dir", [
    ("gke", "/home/kubernetes/bin", "/etc/cni/net.d"),
    ("k3s", "/var/lib/rancher/k3s/data/current/bin", "/var/lib/rancher/k3s/agent/etc/cni/net.d"),
    ("microk8s", "/var/snap/microk8s/current/opt/cni/bin", "/var/snap/microk8s/current/args/cni-network"),
    ("openshift", "/var/lib/cni/bin", "/etc/cni/multus/net.d"),
])
def test_platform_presets_set_the_cni_paths(render, platform, bin_dir, conf_dir):
    assert platform in PLATFORMS
    m = render({"platform": platform})
    paths = host_paths(m)
    assert (paths["cni-bin-dir"], paths["cni-net-dir"]) == (bin_dir, conf_dir)
    assert (m.config["CNI_BIN_DIR"], m.config["CNI_NET_DIR"]) == (bin_dir, conf_dir)
    # the container side never changes: the installer always looks at /host/...
    assert mounts(m)["cni-bin-dir"] == "/host/opt/cni/bin"


def test_openshift_preset_is_standalone_privileged_spc_t_with_scc(render):
    m = render({"platform": "openshift"})
    sc = m.container["securityContext"]
    assert sc["privileged"] is True
    assert sc["seLinuxOptions"] == {"type": "spc_t"}
    assert m.config["CHAINED_CNI_PLUGIN"] == "false"
    assert m.config["CNI_CONF_NAME"] == "istio-cni.conf"
    rules = m.get("ClusterRole", "istio-cni")["rules"]
    assert {"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
            "resourceNames": ["privileged"], "verbs": ["use"]} in rules


def test_explicit_values_win_over_the_preset(render):
    m = render({"platform": "openshift", "cniBinDir": "/opt/custom/bin", "chained": True,
                "securityContext": {"privileged": False, "seLinuxOptions": {"type": "container_t"}}})
    assert host_paths(m)["cni-bin-dir"] == "/opt/custom/bin"
    assert host_paths(m)["cni-net-dir"] == "/etc/cni/multus/net.d"  # not overridden: preset
    assert m.config["CHAINED_CNI_PLUGIN"] == "true"
    sc = m.container["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seLinuxOptions"] == {"type": "container_t"}


def test_no_platform_is_guessed_from_the_server_version(render):
    # `helm template` cannot see the server; a guess would render differently from an install.
    assert host_paths(render(None, kube_version="v1.31.2-gke.1000"))["cni-bin-dir"] == "/opt/cni/bin"


def test_generic_platform_has_no_scc_rule(default_manifests):
    rules = default_manifests.get("ClusterRole", "istio-cni")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                     {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def test_image_reference_forms(render):
    assert render({"hub": "registry.example/mesh", "tag": "1.2.3"}).container["image"] == \
        "registry.example/mesh/install-cni:1.2.3"
    assert render({"image": "registry.example/other/cni@sha256:" + "a" * 64}).container["image"] == \
        "registry.example/other/cni@sha256:" + "a" * 64


def test_pull_secrets_reach_the_pod_and_the_service_account(render):
    m = render({"imagePullSecrets": ["regcred"]})
    assert m.daemonset["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert m.get("ServiceAccount")["imagePullSecrets"] == [{"name": "regcred"}]


def test_pod_customisation_values(render):
    m = render({"podAnnotations": {"a.example/x": "1"}, "podLabels": {"team": "mesh"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "mesh", "operator": "In", "values": ["yes"]}]}]}}},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}],
                "nodeSelector": {"pool": "a"}, "priorityClassName": "high",
                "hostNetwork": True, "rollingMaxUnavailable": "20%",
                "resources": {"limits": {"memory": "256Mi"}}, "env": {"EXTRA": 5}})
    pod = m.daemonset["spec"]["template"]
    assert pod["metadata"]["annotations"]["a.example/x"] == "1"
    assert pod["metadata"]["labels"]["team"] == "mesh"
    assert pod["spec"]["affinity"]["nodeAffinity"]
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "x",
                                           "effect": "NoSchedule"}]
    # Helm merges maps with the defaults (set a key to null to drop it)
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "a"}
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["hostNetwork"] is True and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert m.daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"
    assert m.container["resources"] == {"requests": {"cpu": "100m", "memory": "100Mi"},
                                        "limits": {"memory": "256Mi"}}
    assert {"name": "EXTRA", "value": "5"} in m.container["env"]


def test_metrics_annotations_can_be_turned_off(render):
    m = render({"metrics": {"scrapeAnnotations": False, "port": 9090}})
    assert not any(k.startswith("prometheus.io") for k in m.daemonset["spec"]["template"]["metadata"]["annotations"])
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in m.container["ports"]


def test_config_change_changes_the_pod_template_checksum(render, default_manifests):
    before = default_manifests.daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = render({"logLevel": "debug"}).daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after


def test_resource_quota_for_critical_pods(render, default_manifests):
    assert not default_manifests.all("ResourceQuota")
    quota = render({"resourceQuota": {"enabled": True, "pods": 100}}).get("ResourceQuota")
    assert quota["spec"]["hard"] == {"pods": "100"}
    assert quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"] == ["system-node-critical"]


def test_renders_are_read_with_a_loader_that_refuses_duplicate_keys():
    import yaml
    from support.chartlib import StrictLoader
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'app'"):
        yaml.load("labels:\n  app: a\n  app: b\n", Loader=StrictLoader)
    assert yaml.load("labels: {app: a}", Loader=StrictLoader) == {"labels": {"app": "a"}}
