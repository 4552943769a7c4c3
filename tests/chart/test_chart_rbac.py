"""RBAC is least privilege: pods read cluster-wide, repair rights by mode, our DaemonSet read only."""

from __future__ import annotations

import pytest

POD_READ = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
EVENTS = {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}


def rules(m, name: str) -> list[dict]:
    return m.get("ClusterRole", name)["rules"]


def test_base_role_only_reads_pods(default_manifests):
    assert rules(default_manifests, "istio-cni") == [POD_READ]
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
                                      (("",), ("events",), ("create", "patch"))])
    for r in (r for role in default_manifests.all("ClusterRole") for r in role["rules"]):
        assert "*" not in r["verbs"] and "*" not in r["resources"]


def test_psp_cluster_role_is_bound_in_the_release_namespace_only(render, default_manifests):
    assert "RoleBinding/istio-cni-psp" not in default_manifests.names()
    binding = render({"psp_cluster_role": "restricted-psp-user"}).get("RoleBinding", "istio-cni-psp")
    assert binding["metadata"]["namespace"] == "istio-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "restricted-psp-user"}
