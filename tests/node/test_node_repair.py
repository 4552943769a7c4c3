"""Repair on a real node, every mode: pods that started while the plugin was absent (chart not
installed: no istio-cni entry in the conflist) are found by the node program's repair controller
once the chart is installed, and repaired in place, labelled, or deleted (their owner recreates
them through the CNI chain, now with the plugin).

A Job's pod (``restartPolicy: Never``) never crash-loops: its ``istio-validation`` fails once
and the pod is Failed, with no ``lastState`` — upstream's detection (the previous termination)
never sees it (istio/istio#49210). Two answers are proven here: the controller's detection also
reads the current termination (the failed pod is labelled), and with ``repair.checkNetns`` the
controller inspects the netns of a pod while its validation still probes and commits the rules
in place, so the Job's pod passes validation and runs, without any restart.

Every repaired pod is checked from inside with a real connection (app -> another pod lands on
the proxy's 15001 with the original destination).
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from node.workloads import APP_PORT, injected_pod, plain_pod

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.timeout(1200)]

NS = "node-repair"
REPAIR_WINDOW = 150.0  # s from the chart install: DaemonSet up, watch synced, kubelet's back-off
LABEL_KEY = "cni.istio.io/uninitialized"  # the chart's repair.brokenPodLabelKey


# -- helpers ----------------------------------------------------------------------------------------
def _validation(pod: dict) -> dict:
    for st in (pod or {}).get("status", {}).get("initContainerStatuses", []):
        if st["name"] == "istio-validation":
            return st
    return {}


def _failed_126(pod: dict) -> bool:
    st = _validation(pod)
    term = st.get("state", {}).get("terminated") or st.get("lastState", {}).get("terminated") or {}
    return term.get("exitCode") == 126


def _live(pods, selector: str) -> list[dict]:
    return [p for p in pods.list(NS, selector) if not p["metadata"].get("deletionTimestamp")]


def _one_live(pods, selector: str, cond) -> dict | None:
    live = [p for p in _live(pods, selector) if cond(p)]
    return live[0] if len(live) == 1 else None


def _events_for(pods, uid: str) -> list[dict]:
    q = urllib.parse.urlencode({"fieldSelector": f"involvedObject.uid={uid}"})
    return pods.api.call("GET", f"/api/v1/namespaces/{NS}/events?{q}")["items"]


def _repair_event(pods, uid: str) -> dict:
    def found():
        ours = [e for e in _events_for(pods, uid) if e.get("source", {}).get("component") == "istio-cni-repair"]
        return ours[0] if ours else None
    return pods.wait(found, f"the repair controller's Event on pod uid {uid}", 30)


def _assert_redirected(pods, pod_name: str, target_ip: str) -> None:
    got = pods.connect_from(NS, pod_name, "app", target_ip, APP_PORT)
    assert got.get("listener") == 15001 and got.get("original") == f"{target_ip}:{APP_PORT}", (
        f"{pod_name}: outbound from the app was not redirected to the proxy: {got}")


def _template(name: str, node_images, *, restart_never: bool = False, validation_timeout: int | None = None) -> dict:
    pod = injected_pod(name, NS, node_images["workload"][0], node_images["node"][0])
    if restart_never:
        pod["spec"]["restartPolicy"] = "Never"
    if validation_timeout is not None:
        args = pod["spec"]["initContainers"][0]["args"]
        args[args.index("--timeout") + 1] = str(validation_timeout)
    return {"metadata": {"labels": pod["metadata"]["labels"], "annotations": pod["metadata"]["annotations"]},
            "spec": pod["spec"]}


@pytest.fixture
def owners(pods):
    """``owners(kind_path, manifest)``: create a ReplicaSet/Job; deleted (and its pods) after."""
    made: list[tuple[str, str]] = []

    def make(path: str, manifest: dict) -> dict:
        pods.ensure_namespace(NS)
        made.append((path, manifest["metadata"]["name"]))
        return pods.api.call("POST", f"{path}/namespaces/{NS}/{manifest['kind'].lower()}s", manifest, ok=(201,))

    yield make
    for path, name in made:
        pods.api.call("DELETE", f"{path}/namespaces/{NS}/{path_kind(path)}/{name}",
                      {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
                      ok=(200, 202, 404))
        pods.wait(lambda n=name: not pods.list(NS, f"app={n}"), f"the pods of {name} to be deleted", 120)


def path_kind(path: str) -> str:
    return "replicasets" if path.endswith("apps/v1") else "jobs"


def replicaset(name: str, template: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}}


def job(name: str, template: dict) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 0, "template": template}}


@pytest.fixture(scope="module")
def target_ip(pods, node_images):
    """A plain pod the repaired pods connect to (needs no plugin: created once, kept)."""
    pods.ensure_namespace(NS)
    pods.create(plain_pod("repair-target", NS, node_images["workload"][0]))
    try:
        yield pods.wait_running(NS, "repair-target")["status"]["podIP"]
    finally:
        pods.delete(NS, "repair-target")


def _broken_before_install(release, pods, make, what: str) -> dict:
    """Chart absent; ``make()`` creates the pod(s); wait for its validation to exit 126."""
    release.ensure_absent()
    sel = make()
    return pods.wait(lambda: _one_live(pods, sel, _failed_126),
                     f"istio-validation of {what} (started without the plugin) to exit 126", 90)


# -- the modes --------------------------------------------------------------------------------------
def test_repair_mode_commits_the_rules_in_place(release, pods, made_pods, node_images, target_ip):
    def make():
        made_pods(injected_pod("in-place", NS, node_images["workload"][0], node_images["node"][0]))
        return "app=in-place"

    broken = _broken_before_install(release, pods, make, "a bare pod")
    uid = broken["metadata"]["uid"]
    release.install(repair={"mode": "repair"})
    pod = pods.wait_running(NS, "in-place", timeout=REPAIR_WINDOW)  # kubelet's back-off reruns validation
    assert pod["metadata"]["uid"] == uid, "the pod was replaced, not repaired in place"
    assert _validation(pod)["state"]["terminated"]["exitCode"] == 0
    _assert_redirected(pods, "in-place", target_ip)
    event = _repair_event(pods, uid)
    assert event["reason"] == "IstioCNIRepaired" and "redirect rules committed" in event["message"], event


def test_label_mode_labels_the_broken_pod_and_leaves_it_to_its_owner(release, pods, made_pods, node_images):
    def make():
        made_pods(injected_pod("labelled", NS, node_images["workload"][0], node_images["node"][0]))
        return "app=labelled"

    broken = _broken_before_install(release, pods, make, "a bare pod")
    uid = broken["metadata"]["uid"]
    release.install(repair={"mode": "label"})
    pod = pods.wait(lambda: (p := pods.get(NS, "labelled")) and LABEL_KEY in p["metadata"].get("labels", {}) and p,
                    f"the label {LABEL_KEY} on the broken pod", REPAIR_WINDOW)
    assert pod["metadata"]["uid"] == uid
    assert pod["metadata"]["labels"][LABEL_KEY] == "true"
    event = _repair_event(pods, uid)
    assert event["reason"] == "IstioCNIRepaired" and f"labelled {LABEL_KEY}=true" in event["message"], event
    # Label mode only marks: the netns is untouched, so the validation keeps failing.
    assert not (_validation(pod).get("state", {}).get("terminated") or {}).get("exitCode") == 0, _validation(pod)
    assert pod["status"]["phase"] == "Pending", pod["status"]


def test_delete_mode_deletes_the_pod_and_its_owner_recreates_it_redirected(release, pods, owners, node_images,
                                                                          target_ip):
    def make():
        owners("/apis/apps/v1", replicaset("rs-delete", _template("rs-delete", node_images)))
        return "app=rs-delete"

    broken = _broken_before_install(release, pods, make, "a ReplicaSet's pod")
    old_uid = broken["metadata"]["uid"]
    release.install(repair={"mode": "delete"})

    def replacement():
        live = _live(pods, "app=rs-delete")
        if any(p["metadata"]["uid"] == old_uid for p in live) or len(live) != 1:
            return None
        return live[0]

    new = pods.wait(replacement, "the broken pod deleted and the ReplicaSet's replacement created", REPAIR_WINDOW)
    name = new["metadata"]["name"]
    try:
        pod = pods.wait_running(NS, name)
    except AssertionError as e:
        events = pods.api.call("GET", f"/api/v1/namespaces/{NS}/events")["items"]
        seen = [(p["metadata"]["name"], p["metadata"]["uid"], p["status"].get("phase")) for p in pods.list(NS)]
        raise AssertionError(f"{str(e)[:1500]}\npods now: {seen}\nevents:\n" + "\n".join(
            f"{ev['involvedObject'].get('name')} {ev['reason']}: {ev['message'][:300]}" for ev in events)) from None
    st = _validation(pod)
    assert st["state"]["terminated"]["exitCode"] == 0 and st.get("restartCount", 0) == 0, (
        f"the replacement did not pass validation first time: {st}")
    _assert_redirected(pods, name, target_ip)
    event = _repair_event(pods, old_uid)
    assert event["reason"] == "IstioCNIRepaired" and "deleted" in event["message"], event


# -- restartPolicy: Never (a Job's pod) -----------------------------------------------------------
def test_job_pod_that_never_restarts_is_still_detected(release, pods, owners, node_images):
    """The Job's pod fails once and is Failed: no previous termination for upstream's check."""
    def make():
        owners("/apis/batch/v1", job("job-fails", _template("job-fails", node_images, restart_never=True)))
        return "app=job-fails"

    broken = _broken_before_install(release, pods, make, "a Job's restartPolicy Never pod")
    uid = broken["metadata"]["uid"]
    failed = pods.wait(lambda: (p := pods.get(NS, broken["metadata"]["name"])) and
                       p["status"].get("phase") == "Failed" and p, "the Job's pod to be Failed", 60)
    st = _validation(failed)
    assert st.get("restartCount", 0) == 0 and not st.get("lastState", {}).get("terminated"), (
        f"the pod restarted its validation: upstream's check would see it too: {st}")
    release.install(repair={"mode": "label"})
    pod = pods.wait(lambda: (p := pods.get(NS, failed["metadata"]["name"])) and
                    LABEL_KEY in p["metadata"].get("labels", {}) and p,
                    f"the label {LABEL_KEY} on the Failed Job pod", REPAIR_WINDOW)
    assert pod["metadata"]["uid"] == uid
    event = _repair_event(pods, uid)
    assert "exited 126" in event["message"], event


def test_job_pod_is_repaired_in_place_before_its_validation_gives_up(release, pods, owners, node_images,
                                                                    target_ip):
    """repair.checkNetns: the controller reads the netns of each pod as soon as it has an IP,
    so the rules land while the validation still probes; the pod never fails."""
    release.ensure_absent()
    owners("/apis/batch/v1", job("job-netns", _template("job-netns", node_images, restart_never=True,
                                                        validation_timeout=120)))

    def probing():
        pod = _one_live(pods, "app=job-netns", lambda p: p["status"].get("podIP"))
        return pod if pod and "running" in _validation(pod).get("state", {}) else None

    probing_pod = pods.wait(probing, "the Job pod's validation running (no plugin: it keeps probing)", 90)
    uid, name = probing_pod["metadata"]["uid"], probing_pod["metadata"]["name"]
    release.install(repair={"mode": "repair", "checkNetns": True})
    pod = pods.wait_running(NS, name, timeout=REPAIR_WINDOW)
    assert pod["metadata"]["uid"] == uid
    st = _validation(pod)
    assert st["state"]["terminated"]["exitCode"] == 0 and st.get("restartCount", 0) == 0, json.dumps(st)
    _assert_redirected(pods, name, target_ip)
    event = _repair_event(pods, uid)
    assert "redirect rules missing" in event["message"] and "committed" in event["message"], event
