"""RBAC is least privilege and covers the node program's calls: pods read cluster-wide, nodes read
(upgrade check), repair rights by mode, our DaemonSet read only."""

from __future__ import annotations

import pytest

POD_READ = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
NODE_READ = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
EVENTS = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}  # only ever POSTed


def rules(m, name: str) -> list[dict]:
    return m.get("ClusterRole", name)["rules"]


def test_base_role_only_reads_pods_and_nodes(default_manifests):
    assert rules(default_manifests, "istio-cni") == [POD_READ, NODE_READ]
    binding = default_manifests.get("ClusterRoleBinding", "istio-cni")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "istio-cni"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istio-cni",
                                    "namespace": "istio-system"}]


@pytest.mark.parametrize("values, expected", [
    ({}, [EVENTS]),  # repair in place: the pod object is never changed
    ({"repair": {"mode": "delete"}}, [EVENTS, {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]),
    ({"repair": {"mode": "label"}}, [EVENTS, {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]),
    ({"repair": {"mode": "label", "createEvents": False}},
     [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]),
])
def test_repair_role_grants_what_the_mode_needs(render, values, expected):
    m = render(values)
    assert rules(m, "istio-cni-repair") == expected
    assert m.get("ClusterRoleBinding", "istio-cni-repair")["roleRef"]["name"] == "istio-cni-repair"


def test_repair_in_place_without_events_needs_no_repair_role(render):
    m = render({"repair": {"createEvents": False}})
    assert "ClusterRole/istio-cni-repair" not in m.names()
    assert "ClusterRoleBinding/istio-cni-repair" not in m.names()


@pytest.mark.parametrize("legacy, mode", [
    ({"labelPods": True}, "label"),
    ({"deletePods": True}, "delete"),
    ({"labelPods": True, "deletePods": True}, "delete"),  # 2019 precedence
    ({"labelPods": False, "deletePods": False, "mode": "label"}, "label"),
])
def test_2019_repair_switches_select_the_mode(render, legacy, mode):
    m = render({"repair": legacy})
    assert m.config["REPAIR_LABEL_PODS"] == str(mode == "label").lower()
    assert m.config["REPAIR_DELETE_PODS"] == str(mode == "delete").lower()
    assert m.config["REPAIR_REPAIR_PODS"] == "false"


def test_upgrade_check_reads_only_our_daemonset_in_our_namespace(default_manifests):
    role = default_manifests.get("Role", "istio-cni-upgrade-check")
    assert role["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                              "resourceNames": ["istio-cni-node"], "verbs": ["get"]}]
    binding = default_manifests.get("RoleBinding", "istio-cni-upgrade-check")
    assert binding["roleRef"]["kind"] == "Role"


def test_nothing_else_is_granted_cluster_wide(default_manifests):
    granted = [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]))
               for role in default_manifests.all("ClusterRole") for r in role["rules"]]
    assert sorted(granted) == sorted([(("",), ("pods",), ("get", "list", "watch")),
                                      (("",), ("nodes",), ("get",)),
                                      (("",), ("events",), ("create",))])
    for r in (r for role in default_manifests.all("ClusterRole") for r in role["rules"]):
        assert "*" not in r["verbs"] and "*" not in r["resources"]


def test_psp_cluster_role_is_bound_in_the_release_namespace_only(render, default_manifests):
    assert "RoleBinding/istio-cni-psp" not in default_manifests.names()
    binding = render({"psp_cluster_role": "restricted-psp-user"}).get("RoleBinding", "istio-cni-psp")
    assert binding["metadata"]["namespace"] == "istio-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "restricted-psp-user"}


def test_without_safe_upgrade_the_upgrade_check_rights_are_not_granted(render):
    # DISABLE_SAFE_UPGRADE=true: the installer never reads its DaemonSet or its node.
    m = render({"safeUpgrade": False})
    assert m.config["DISABLE_SAFE_UPGRADE"] == "true"
    assert rules(m, "istio-cni") == [POD_READ]
    assert "Role/istio-cni-upgrade-check" not in m.names()
    assert "RoleBinding/istio-cni-upgrade-check" not in m.names()


def test_rbac_covers_every_call_the_repair_controller_makes(render):
    """Drive the real controller against a recording client; every call must be granted."""
    from istio_cni_installer.repair import RepairController, RepairSettings

    class Recorder:
        def __init__(self):
            self.calls = []

        def patch_pod_status(self, ns, name, patch):
            self.calls.append(("patch", "pods/status"))

        def delete_pod(self, ns, name, uid, rv):
            self.calls.append(("delete", "pods"))

        def create_event(self, ns, body):
            self.calls.append(("create", "events"))

    class Cache:
        node_name, label_selector, field_selector = "node-a", "", ""
        listeners: list = []

        def __init__(self, pod):
            self.pod = pod

        def get(self, ns, name):
            return self.pod

    pod = {"metadata": {"namespace": "default", "name": "p", "uid": "u1", "resourceVersion": "1",
                        "annotations": {"sidecar.istio.io/status": "{}"}},
           "status": {"initContainerStatuses": [{"name": "istio-validation", "state": {"running": {}},
                                                 "lastState": {"terminated": {"exitCode": 126}}}]}}
    for mode in ("label", "delete"):
        api = Recorder()
        rc = RepairController(api, Cache(pod), RepairSettings(mode=mode, node_name="node-a"))
        rc.reconcile("default", "p", "u1")
        granted = {(verb, res) for r in rules(render({"repair": {"mode": mode}}), "istio-cni-repair")
                   for res in r["resources"] for verb in r["verbs"]}
        assert api.calls and set(api.calls) == granted, (mode, api.calls, granted)
