"""Startup taint in the chart: off by default (no node patch right, no toleration added, installer
told to leave taints alone); on: toleration of the key, get+patch on nodes, the key passed on."""

from __future__ import annotations

import pytest
from peers.kubeapi import write_kubeconfig
from test_chart_apply import api, applied_rbac, kube_version, namespace  # noqa: F401 (fixtures)
from test_chart_settings import container_env, installer_view

from istio_cni_installer.kube.client import ApiError, KubeClient
from istio_cni_installer.taint import remove_taint

NODE_GET = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
NODE_GET_PATCH = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
STARTUP_TOLERATION = {"key": "cni.istio.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}


def node_rules(m) -> list[dict]:
    return [r for role in m.all("ClusterRole") for r in role["rules"]
            if any(res.startswith("nodes") for res in r["resources"])]


def test_off_by_default_no_patch_right_and_installer_leaves_taints_alone(default_manifests):
    assert node_rules(default_manifests) == [NODE_GET]
    assert default_manifests.config["STARTUP_TAINT_KEY"] == ""
    assert installer_view(default_manifests).startup_taint_key == ""
    assert default_manifests.daemonset["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_on_grants_get_and_patch_on_nodes_tolerates_and_passes_the_key(render):
    m = render({"taint": {"enabled": True}})
    assert node_rules(m) == [NODE_GET_PATCH]
    assert container_env(m)["STARTUP_TAINT_KEY"] == "cni.istio.io/not-ready"
    assert installer_view(m).startup_taint_key == "cni.istio.io/not-ready"
    assert m.daemonset["spec"]["template"]["spec"]["tolerations"] == [STARTUP_TOLERATION, {"operator": "Exists"}]
    # the node name the program untaints comes from the downward API
    env = {e["name"]: e for e in m.container["env"]}
    assert env["KUBERNETES_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_custom_key_is_tolerated_even_with_narrow_user_tolerations(render):
    m = render({"taint": {"enabled": True, "key": "example.com/cni-pending"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]})
    assert m.daemonset["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "example.com/cni-pending", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]
    assert installer_view(m).startup_taint_key == "example.com/cni-pending"


def test_patch_right_even_without_safe_upgrade_and_none_when_both_off(render):
    assert node_rules(render({"taint": {"enabled": True}, "safeUpgrade": False})) == [NODE_GET_PATCH]
    assert node_rules(render({"safeUpgrade": False})) == []


@pytest.mark.parametrize("key", ["has space", "UPPER_/x", "-leading", ""])
def test_bad_taint_key_is_refused_by_the_schema(render_error, key):
    err = render_error({"taint": {"enabled": True, "key": key}})
    assert "taint" in err and "key" in err, err


# ---- the rendered RBAC on the real kube-apiserver ---------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("enabled", [True, False], ids=["taint-on", "taint-off"])
def test_the_charts_identity_can_remove_the_taint_only_when_enabled(
        control_plane, namespace, applied_rbac, tmp_path, enabled):  # noqa: F811
    applied_rbac({"taint": {"enabled": enabled}})
    kapi = control_plane.api
    token = kapi.token_for(namespace, "istio-cni")
    client = KubeClient.from_kubeconfig(str(write_kubeconfig(
        tmp_path / "kc", control_plane.server, control_plane.ca_file, token,
        f"system:serviceaccount:{namespace}:istio-cni")))
    node = f"chart-taint-{namespace}"
    ours = {"key": "cni.istio.io/not-ready", "effect": "NoSchedule"}
    kapi.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                                        "spec": {"taints": [ours]}})
    try:
        if enabled:
            assert remove_taint(client, node, "cni.istio.io/not-ready") == "removed"
            left = kapi.call("GET", f"/api/v1/nodes/{node}")["spec"].get("taints") or []
            assert all(t["key"] != "cni.istio.io/not-ready" for t in left)
        else:
            with pytest.raises(ApiError) as e:
                remove_taint(client, node, "cni.istio.io/not-ready")
            assert e.value.status == 403 and e.value.args[0].startswith("PATCH ")  # the read is allowed
    finally:
        kapi.call("DELETE", f"/api/v1/nodes/{node}", ok=(200, 202, 404))
