"""Repair modes acting on real API objects (etcd + kube-apiserver): label, delete, in place."""

from __future__ import annotations

import pytest
from support.cpsupport import events_for, manifest, set_status, unique
from support.injected_pods import injected_pod, validation_failed
from support.nodeharness import rules_in
from support.repairsupport import eventually

from istio_cni_installer.agent import PodCache
from istio_cni_installer.kube.client import KubeClient
from istio_cni_installer.repair import RepairController, RepairSettings

pytestmark = [pytest.mark.root, pytest.mark.peers]
WAIT = 30.0


@pytest.fixture
def cp_repair(control_plane):
    ns, node = unique("repair"), unique("node")
    control_plane.create_namespace(ns)
    control_plane.api.ensure_service_account(ns, "default")
    api = KubeClient.from_kubeconfig(str(control_plane.kubeconfig))
    cache = PodCache(api, node, relist_backoff=0.2).start()
    assert cache.wait_synced(WAIT)
    made = []

    def start(mode: str, **kw) -> RepairController:
        rc = RepairController(api, cache, RepairSettings(mode=mode, node_name=node, **kw))
        made.append(rc)
        return rc.start()

    yield ns, node, start
    for rc in made:
        rc.stop()
    cache.stop()
    api.close()


def broken_status(ip: str = "") -> dict:
    status = validation_failed(injected_pod("x", ip=ip))["status"]
    status["phase"] = "Pending"
    status.pop("qosClass", None)  # set by the API server at creation, immutable since
    return status


def test_label_mode_labels_the_real_pod_once(control_plane, cp_repair):
    ns, node, start = cp_repair
    control_plane.create_pod(manifest(injected_pod("lbl-1"), ns, node))
    set_status(control_plane, ns, "lbl-1", broken_status())
    rc = start("label")
    eventually(lambda: (control_plane.get_pod(ns, "lbl-1")["metadata"].get("labels") or {})
               .get("cni.istio.io/uninitialized") == "true", "label on the real pod")
    ev = eventually(lambda: [e for e in events_for(control_plane, ns, "lbl-1") if e["reason"] == "IstioCNIRepaired"],
                    "repair event")
    assert ev[0]["type"] == "Normal" and ev[0]["source"]["component"] == "istio-cni-repair"
    assert rc.counts == {("label", "success"): 1}


def test_delete_mode_deletes_the_real_pod(control_plane, cp_repair):
    ns, node, start = cp_repair
    control_plane.create_pod(manifest(injected_pod("del-1"), ns, node))
    control_plane.create_pod(manifest(injected_pod("keep-1"), ns, node))
    set_status(control_plane, ns, "del-1", broken_status())
    start("delete")

    def deleting():
        code, text = control_plane.api.raw("GET", f"/api/v1/namespaces/{ns}/pods/del-1")
        # No kubelet here to confirm termination: graceful deletion shows as deletionTimestamp.
        return code == 404 or '"deletionTimestamp"' in text

    eventually(deleting, "deletion of del-1")
    assert "deletionTimestamp" not in control_plane.get_pod(ns, "keep-1")["metadata"]
    assert eventually(lambda: events_for(control_plane, ns, "del-1"), "event")[0]["reason"] == "IstioCNIRepaired"


def test_repair_mode_fixes_the_netns_of_a_real_pod(control_plane, cp_repair, sandbox, validate_bin):
    from istio_cni.tools import netns as nsutil

    ns, node, start = cp_repair
    netns_name, ip = sandbox()
    control_plane.create_pod(manifest(injected_pod("fix-1"), ns, node))
    set_status(control_plane, ns, "fix-1", broken_status(ip))
    start("repair")
    eventually(lambda: "ISTIO_OUTPUT" in rules_in(netns_name), "rules in the sandbox")
    out = nsutil.exec_in(netns_name, str(validate_bin), "validate", "--timeout", "5", timeout=60)
    assert out.returncode == 0, out.stderr
    ev = eventually(lambda: events_for(control_plane, ns, "fix-1"), "event")
    assert "redirect rules committed" in ev[0]["message"]


def test_label_and_field_selectors_narrow_the_pods_server_side(control_plane):
    """REPAIR_LABEL_SELECTORS / REPAIR_FIELD_SELECTORS reach the real API server's list and watch."""
    from istio_cni_installer.repair import pod_cache_for

    ns, node = unique("repair"), unique("node")
    control_plane.create_namespace(ns)
    control_plane.api.ensure_service_account(ns, "default")
    # injected_pod labels app=<name without its last -part>
    for name in ("wanted-1", "wanted-2", "other-1"):
        control_plane.create_pod(manifest(injected_pod(name), ns, node))
        set_status(control_plane, ns, name, broken_status())
    api = KubeClient.from_kubeconfig(str(control_plane.kubeconfig))
    rs = RepairSettings(mode="label", node_name=node, label_selectors="app=wanted",
                        field_selectors="metadata.name!=wanted-2")
    cache = pod_cache_for(api, rs, relist_backoff=0.2).start()
    rc = RepairController(api, cache, rs).start()
    try:
        assert cache.wait_synced(WAIT)
        assert sorted(p["metadata"]["name"] for p in cache.pods()) == ["wanted-1"]
        eventually(lambda: rc.counts.get(("label", "success")) == 1, "label on wanted-1")
        labels = {n: control_plane.get_pod(ns, n)["metadata"].get("labels") or {}
                  for n in ("wanted-1", "wanted-2", "other-1")}
        assert labels["wanted-1"].get("cni.istio.io/uninitialized") == "true"
        assert "cni.istio.io/uninitialized" not in labels["wanted-2"]
        assert "cni.istio.io/uninitialized" not in labels["other-1"]
    finally:
        rc.stop()
        cache.stop()
        api.close()
