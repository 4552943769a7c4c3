"""Repair controller end to end: pod API (mini) + pod cache + real netns found through /proc."""

from __future__ import annotations

import os
import threading

import pytest
from support.injected_pods import NODE, injected_pod, validation_failed
from support.nodeharness import rules_in
from support.repairsupport import eventually

from istio_cni.tools import netns as nsutil
from istio_cni_installer.agent import PodCache
from istio_cni_installer.repair import RepairController, RepairSettings

pytestmark = pytest.mark.root
WAIT = 20.0


@pytest.fixture
def cache(api_client):
    c = PodCache(api_client, NODE, relist_backoff=0.05).start()
    assert c.wait_synced(WAIT)
    yield c
    c.stop()


@pytest.fixture
def controller(api_client, cache):
    made = []

    def start(mode: str, **kw) -> RepairController:
        retry = kw.pop("retry_base", 0.05)
        ready = kw.pop("plugin_ready", None)
        rc = RepairController(api_client, cache, RepairSettings(mode=mode, node_name=NODE, **kw), retry_base=retry,
                              plugin_ready=ready)
        made.append(rc)
        return rc.start()

    yield start
    for rc in made:
        rc.stop()


def running(pod: dict) -> dict:
    pod["status"]["phase"] = "Running"
    return pod


def events_for(api, name: str, reason: str) -> list:
    return [e for e in api.events if e["involvedObject"]["name"] == name and e["reason"] == reason]


def barrier(api, rc: RepairController, tag: str) -> None:
    """Wait until the worker has processed everything queued so far (FIFO, one worker):
    queue a broken pod of its own and wait for its label or repair event."""
    api.put_pod(validation_failed(injected_pod(f"barrier-{tag}")))
    eventually(lambda: any(e["involvedObject"]["name"] == f"barrier-{tag}" for e in api.events), "barrier")


def test_repairs_in_place_a_pod_whose_validation_failed(mini_api, controller, sandbox, validate_bin):
    ns, ip = sandbox()
    pod = mini_api.put_pod(validation_failed(running(injected_pod("broken-1", ip=ip))))
    before = rules_in(ns)
    assert "ISTIO" not in before
    rc = controller("repair")
    eventually(lambda: "ISTIO_OUTPUT" in rules_in(ns), "rules in the pod netns")
    ev = eventually(lambda: events_for(mini_api, "broken-1", "IstioCNIRepaired"), "repair event")
    assert ev[0]["type"] == "Normal" and ev[0]["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert rc.counts == {("repair", "success"): 1}
    # The init container's next run now passes.
    out = nsutil.exec_in(ns, str(validate_bin), "validate", "--timeout", "5", timeout=60)
    assert out.returncode == 0, out.stderr
    # Never twice for one UID: a later update of the same pod does not act again.
    committed = rules_in(ns)
    mini_api.put_pod(validation_failed(running(injected_pod("broken-1", ip=ip, uid=pod["metadata"]["uid"]))))
    barrier(mini_api, rc, "1")
    assert len(events_for(mini_api, "broken-1", "IstioCNIRepaired")) == 1
    assert rules_in(ns) == committed


def test_netns_check_finds_a_pod_whose_add_was_skipped(mini_api, controller, sandbox):
    ns, ip = sandbox()
    rc = controller("repair", check_netns=True)
    # Healthy-looking pod (validation not failed) whose ADD never ran: only the netns check sees it.
    mini_api.put_pod(running(injected_pod("skipped-1", ip=ip)))
    eventually(lambda: "ISTIO_OUTPUT" in rules_in(ns), "rules in the pod netns")
    ev = eventually(lambda: events_for(mini_api, "skipped-1", "IstioCNIRepaired"), "repair event")
    assert "rules missing" in ev[0]["message"]
    assert rc.counts[("repair", "success")] == 1


def test_netns_check_leaves_pods_with_rules_alone(mini_api, controller, sandbox, api_client):
    ns, ip = sandbox()
    pod = running(injected_pod("healthy-1", ip=ip))
    from istio_cni import netfilter
    from istio_cni_installer.repair.controller import _default_plan

    ruleset, _ = _default_plan(pod, RepairSettings(mode="repair", node_name=NODE))
    netfilter.apply(nsutil.path(ns), ruleset)  # what a normal ADD leaves behind
    rc = controller("repair", check_netns=True)
    mini_api.put_pod(pod)
    eventually(lambda: pod["metadata"]["uid"] in rc.checked, "netns check of healthy-1")
    barrier(mini_api, rc, "2")
    assert events_for(mini_api, "healthy-1", "IstioCNIRepaired") == []


def test_label_mode_labels_once_through_the_status_subresource(mini_api, controller):
    pod = mini_api.put_pod(validation_failed(injected_pod("lbl-1")))
    rc = controller("label")
    eventually(lambda: (mini_api.get("default", "lbl-1")["metadata"].get("labels") or {})
               .get("cni.istio.io/uninitialized") == "true", "label")
    patches = [p for m, p in mini_api.requests if m == "PATCH"]
    assert patches == ["/api/v1/namespaces/default/pods/lbl-1/status"]
    barrier(mini_api, rc, "3")  # the label's own MODIFIED event has been processed by now
    assert len([p for m, p in mini_api.requests if m == "PATCH" and "lbl-1" in p]) == 1
    ev = events_for(mini_api, "lbl-1", "IstioCNIRepaired")
    assert len(ev) == 1 and ev[0]["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert "labelled cni.istio.io/uninitialized=true" in ev[0]["message"]


def test_label_mode_applies_the_configured_label_key_and_value(mini_api, controller):
    mini_api.put_pod(validation_failed(injected_pod("lbl-2")))
    controller("label", label_key="example.com/cni-broken", label_value="yes")
    labels = eventually(lambda: (mini_api.get("default", "lbl-2")["metadata"].get("labels") or {})
                        .get("example.com/cni-broken") and mini_api.get("default", "lbl-2")["metadata"]["labels"],
                        "custom label")
    assert labels["example.com/cni-broken"] == "yes"
    assert "cni.istio.io/uninitialized" not in labels


def test_create_events_false_posts_no_event(mini_api, controller):
    mini_api.put_pod(validation_failed(injected_pod("quiet-1")))
    rc = controller("label", create_events=False)
    eventually(lambda: rc.counts.get(("label", "success")) == 1, "label action")
    assert mini_api.get("default", "quiet-1")["metadata"]["labels"]["cni.istio.io/uninitialized"] == "true"
    assert not [m for m, _ in mini_api.requests if m == "POST"]
    assert mini_api.events == []


def test_custom_exit_code_and_init_container_name_drive_the_action(mini_api, controller):
    custom = validation_failed(injected_pod("custom-1"), exit_code=7)
    custom["status"]["initContainerStatuses"][0]["name"] = "mesh-check"
    mini_api.put_pod(custom)
    mini_api.put_pod(validation_failed(injected_pod("default-1")))  # 126 from istio-validation: not ours now
    rc = controller("label", exit_code=7, init_container_name="mesh-check")
    eventually(lambda: (mini_api.get("default", "custom-1")["metadata"].get("labels") or {})
               .get("cni.istio.io/uninitialized") == "true", "label on custom-1")
    barrier_pod = validation_failed(injected_pod("barrier-4"), exit_code=7)
    barrier_pod["status"]["initContainerStatuses"][0]["name"] = "mesh-check"
    mini_api.put_pod(barrier_pod)
    eventually(lambda: rc.counts.get(("label", "success")) == 2, "barrier label")
    assert "cni.istio.io/uninitialized" not in (mini_api.get("default", "default-1")["metadata"].get("labels") or {})


def test_repair_node_name_selects_the_watched_node(mini_api, api_client):
    from istio_cni_installer.repair import pod_cache_for

    mini_api.put_pod(validation_failed(injected_pod("here-1")))  # on NODE
    mini_api.put_pod(validation_failed(injected_pod("there-1", node="node-b")))
    rs = RepairSettings(mode="label", node_name="node-b")
    cache = pod_cache_for(api_client, rs, relist_backoff=0.05).start()
    rc = RepairController(api_client, cache, rs, retry_base=0.05).start()
    try:
        # the count is taken after the PATCH returns: wait for it, not for the label (a race)
        eventually(lambda: rc.counts.get(("label", "success")) == 1, "label action on the node-b pod")
        assert mini_api.get("default", "there-1")["metadata"]["labels"]["cni.istio.io/uninitialized"] == "true"
        assert rc.counts == {("label", "success"): 1}
        assert "cni.istio.io/uninitialized" not in (mini_api.get("default", "here-1")["metadata"].get("labels") or {})
    finally:
        rc.stop()
        cache.stop()


def test_a_cache_that_does_not_carry_the_selectors_is_refused(api_client, cache):
    with pytest.raises(ValueError, match="label selector 'app=x'.*pod_cache_for"):
        RepairController(api_client, cache, RepairSettings(mode="label", node_name=NODE, label_selectors="app=x"))
    with pytest.raises(ValueError, match="node 'node-b'"):
        RepairController(api_client, cache, RepairSettings(mode="label", node_name="node-b"))


def test_delete_mode_deletes_with_preconditions(mini_api, controller):
    mini_api.put_pod(validation_failed(injected_pod("del-1")))
    mini_api.put_pod(injected_pod("fine-1"))
    rc = controller("delete")
    eventually(lambda: mini_api.get("default", "del-1") is None, "deletion")
    assert mini_api.get("default", "fine-1") is not None
    eventually(lambda: events_for(mini_api, "del-1", "IstioCNIRepaired"), "event")  # posted after the delete
    assert rc.counts == {("delete", "success"): 1}


def test_gives_up_after_max_attempts_and_reports_failure(mini_api, controller):
    # A pod IP no netns on this node holds: the in-place repair cannot find the sandbox.
    mini_api.put_pod(validation_failed(running(injected_pod("lost-1", ip="192.0.2.77"))))
    rc = controller("repair", max_attempts=2, retry_base=0.05)
    ev = eventually(lambda: events_for(mini_api, "lost-1", "IstioCNIRepairFailed"), "failure event")
    assert ev[0]["type"] == "Warning"
    assert "192.0.2.77" in ev[0]["message"]
    assert rc.counts == {("repair", "failure"): 1}


def test_find_netns_prefers_the_oldest_process(sandbox):
    from istio_cni_installer.repair.netns import find_netns

    name, ip = sandbox()
    found = find_netns([ip])
    assert found.startswith("/proc/") and found.endswith("/ns/net")
    assert os.stat(found).st_ino == os.stat(nsutil.path(name)).st_ino
    assert find_netns(["192.0.2.78"]) == ""


def test_delete_mode_waits_until_the_plugin_is_installed_on_this_node(mini_api, api_client, cache):
    # The node program starts repair while its first install still runs: a pod deleted then
    # could be recreated on this node before the plugin and start unredirected again.
    installed, checks = threading.Event(), []

    def plugin_ready() -> bool:
        checks.append(installed.is_set())
        return installed.is_set()

    mini_api.put_pod(validation_failed(injected_pod("del-wait")))
    rc = RepairController(api_client, cache, RepairSettings(mode="delete", node_name=NODE), retry_base=0.05,
                          plugin_ready=plugin_ready, plugin_wait=0.02).start()
    try:
        eventually(lambda: len(checks) >= 5, "the controller to check the plugin five times")
        assert mini_api.get("default", "del-wait") is not None, "deleted before the plugin was installed"
        assert not events_for(mini_api, "del-wait", "IstioCNIRepaired") and rc.counts == {}
        installed.set()
        eventually(lambda: mini_api.get("default", "del-wait") is None, "deletion once the plugin is in place")
        assert rc.counts == {("delete", "success"): 1}
    finally:
        rc.stop()


def test_label_mode_does_not_wait_for_the_plugin(mini_api, controller):
    # Labelling (and repair in place) never depend on the plugin being installed here.
    mini_api.put_pod(validation_failed(injected_pod("lbl-now")))
    rc = controller("label", plugin_ready=lambda: False)
    eventually(lambda: "cni.istio.io/uninitialized" in mini_api.get("default", "lbl-now")["metadata"].get("labels", {}),
               "label")
    assert rc.counts == {("label", "success"): 1}


def test_repair_mode_reports_a_terminated_pod_at_once_without_retrying(mini_api, controller):
    # restartPolicy Never: the validation failed once, the pod is Failed and its sandbox gone.
    pod = validation_failed(injected_pod("job-failed"))
    pod["spec"]["restartPolicy"] = "Never"
    pod["status"]["phase"] = "Failed"
    mini_api.put_pod(pod)
    rc = controller("repair", max_attempts=5, retry_base=5.0)  # a retry would take 5 s, then 10 s, ...
    ev = eventually(lambda: events_for(mini_api, "job-failed", "IstioCNIRepairFailed"), "failure event")
    assert "the pod is Failed (restartPolicy Never)" in ev[0]["message"] and "repair.checkNetns" in ev[0]["message"]
    assert rc.counts == {("repair", "failure"): 1}
    assert rc._attempts == {}
