"""The plugin's life on a node: pod deletion (CNI DEL), a rolling ``helm upgrade`` that never lets
a pod start unredirected, ``helm uninstall``, and a pod that started before the plugin was there
being repaired once the chart is installed."""

from __future__ import annotations

import json
import threading
import time

import pytest

from istio_cni_installer.standin import is_standin
from node.pods import has_istio_rules
from node.workloads import APP_PORT, injected_pod, plain_pod

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.timeout(900)]

NS = "node-lifecycle"
DEL_ERRORS = ("failed to destroy network", "failed to teardown", "error tearing down", "plugin type=\"istio-cni\"")


def test_deleting_a_pod_runs_del_cleanly_and_leaves_nothing(release, pods, node, node_images):
    release.ensure()
    pods.ensure_namespace(NS)
    pods.create(injected_pod("doomed", NS, node_images["workload"][0], node_images["node"][0]))
    pod = pods.wait_running(NS, "doomed")
    sandbox = pods.sandbox_id(NS, "doomed")
    netns = pods.netns_path(NS, "doomed")
    ip = pod["status"]["podIP"]
    ipam = node.dir / "cni" / "ipam" / "node-bridge" / ip
    assert ipam.exists(), "host-local IPAM holds the pod's address while it runs"
    log_mark = (node.logs / "containerd.log").stat().st_size

    pods.delete(NS, "doomed")  # through kubelet: StopPodSandbox runs the chain's DEL
    state = pods.wait(lambda: [s for s in pods.all_sandboxes() if s["id"] == sandbox and s["state"] != "SANDBOX_READY"],
                      "the deleted pod's sandbox to stop", 60)
    assert state, state
    assert not ipam.exists(), "DEL released the pod's address"
    assert not node.holder.run("test", "-e", netns, check=False).returncode == 0, f"{netns} still exists"
    # A second DEL (the runtime's remove after stop) must succeed as well, and the sandbox is gone.
    node.crictl("rmp", sandbox)
    assert sandbox not in {s["id"] for s in pods.all_sandboxes()}
    log = (node.logs / "containerd.log").read_bytes()[log_mark:].decode(errors="replace")
    bad = [line for line in log.splitlines() if sandbox[:12] in line and any(e in line for e in DEL_ERRORS)]
    assert not bad, "containerd reported a DEL failure:\n" + "\n".join(bad[:5])


def test_helm_upgrade_rolls_and_the_conflist_never_loses_our_entry(release, node):
    release.ensure()
    old_uid = release.ready_pod()["metadata"]["uid"]
    samples, problems = [], []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                conf = json.loads(node.primary_conflist.read_text())
                last = conf["plugins"][-1]["type"]
                if last != "istio-cni":
                    problems.append(f"last plugin is {last!r}")
            except (OSError, ValueError, KeyError, IndexError) as e:
                problems.append(f"{type(e).__name__}: {e}")
            samples.append(time.monotonic())
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, name="conflist-sampler", daemon=True)
    sampler.start()
    try:
        release.upgrade(logLevel="debug")  # a changed value: new ConfigMap checksum, new pod template
        new = release.wait_rolled(old_uid)
        time.sleep(0.5)  # and a little after the new pod is Ready
    finally:
        stop.set()
        sampler.join(5)
    assert new["metadata"]["uid"] != old_uid
    assert release.daemonset()["status"]["updatedNumberScheduled"] == 1
    assert len(samples) > 50, f"the sampler ran only {len(samples)} times"
    assert not problems, f"{len(problems)} of {len(samples)} samples bad during the roll, first: {problems[:3]}"


def test_helm_uninstall_removes_the_plugin_and_new_pods_start_without_it(release, pods, node, made_pods, node_images):
    release.ensure()
    with_us = json.loads(node.primary_conflist.read_text())
    release.uninstall()
    conf = json.loads(node.primary_conflist.read_text())
    assert [p["type"] for p in conf["plugins"]] == ["bridge"], conf
    assert conf["plugins"][0] == with_us["plugins"][0], "the primary's own entry changed"
    assert conf["name"] == with_us["name"] and conf["cniVersion"] == with_us["cniVersion"]
    assert not (node.run_dir / "istio-cni-kubeconfig").exists()
    # The launcher is replaced by the DEL-only stand-in (pods set up before can still be
    # deleted by a runtime that DELs from its cached config; docs/installer.md).
    assert is_standin((node.cni_bin_dir / "istio-cni").read_text())
    assert not (node.cni_bin_dir / "istio-cni.d").exists() or not any((node.cni_bin_dir / "istio-cni.d").iterdir())
    made_pods(plain_pod("after-uninstall", NS, node_images["workload"][0]))
    pods.wait_running(NS, "after-uninstall")
    assert not has_istio_rules(pods.rules(NS, "after-uninstall"))


def test_pod_started_without_the_plugin_fails_validation_then_is_repaired(release, pods, made_pods, node_images):
    release.ensure_absent()
    workload = node_images["workload"][0]
    made_pods(plain_pod("repair-target", NS, workload))
    made_pods(injected_pod("early", NS, workload, node_images["node"][0]))

    def failed_126():
        pod = pods.get(NS, "early")
        st = pods.init_status(pod or {}, "istio-validation")
        term = (st.get("state", {}).get("terminated") or st.get("lastState", {}).get("terminated") or {})
        return pod if term.get("exitCode") == 126 else None

    early = pods.wait(failed_126, "istio-validation of a pod started without the plugin to exit 126", 60)
    uid = early["metadata"]["uid"]
    release.ensure()  # the chart's default repair mode: repair the pod's netns in place
    assert release.values.get("repair", {}).get("mode") in (None, "repair")
    pod = pods.wait_running(NS, "early", timeout=150)  # kubelet's back-off retries the init container
    assert pod["metadata"]["uid"] == uid, "the pod was replaced, not repaired in place"
    assert pods.init_status(pod, "istio-validation")["state"]["terminated"]["exitCode"] == 0
    target = pods.wait_running(NS, "repair-target")["status"]["podIP"]
    got = pods.connect_from(NS, "early", "app", target, APP_PORT)
    assert got.get("listener") == 15001 and got["original"] == f"{target}:{APP_PORT}", got
