"""Startup taint in the chart: off by default (no node patch right, no toleration added, installer
told to leave taints alone); on: toleration of the key, get+patch on nodes, the key passed on."""

from __future__ import annotations

import pytest
from test_chart_settings import container_env, installer_view

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
