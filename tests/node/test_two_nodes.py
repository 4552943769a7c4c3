"""Two real nodes, one control plane: no injected pod ever runs unredirected while a node joins,
the DaemonSet rolls, the chart is uninstalled and reinstalled, the primary CNI rewrites its
conflist, or 100 pods arrive at once (issue 16's scenarios).

The second node (node/twonode.py) is prepared once for this module and joins in the first
scenario, with the startup taint, while pods are being created; the later scenarios reuse both
nodes. Every scenario creates injected pods continuously (node/scenario.py: each one checked
from inside with a real connection, counts printed, recorded in <pytest basetemp>/
two-nodes-scenarios.jsonl and repeated in the terminal summary). At the end of the module the
second node is stopped and removed from the API, so the single-node tests see one node again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from istio_cni_installer.standin import is_standin
from node.cluster import NodeError
from node.pods import Pods
from node.scenario import SUMMARY, Churn
from node.twonode import STARTUP_TAINT, SecondNode, install, upgrade, wait_rollout

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.two_nodes, pytest.mark.timeout(900)]

VALUES = {"taint": {"enabled": True}}  # the node program lifts the startup taint of a joining node
TAINT_TIMEOUT = 120.0
CONFLIST_REWRITE_EVERY = 1.0
BURST_WINDOW = 300.0  # 100 pods starting at once on 2 cores: creation to Running may take minutes


@pytest.fixture(scope="module")
def node2(node, request):
    workdir = Path(tempfile.mkdtemp(prefix="istio-cni-node2-", dir="/tmp"))
    second = SecondNode(workdir, node)
    problems = []
    failed_before = request.session.testsfailed
    try:
        try:
            second.prepare()
        except NodeError as e:
            pytest.fail(f"the second node could not be prepared: {e}", pytrace=False)
        yield second
    finally:
        t0 = time.monotonic()
        try:
            second.stop()
        except NodeError as e:
            problems.append(str(e))
        second.timings["stop"] = time.monotonic() - t0
        SUMMARY.append("two-nodes: node 2 " + ", ".join(f"{k} {v:.1f}s" for k, v in second.timings.items()))
        if not problems and request.session.testsfailed == failed_before:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # a failed scenario or teardown: keep node 2's logs, not its runtime state
            for big in ("containerd", "kubelet"):
                shutil.rmtree(workdir / big, ignore_errors=True)
            print(f"node 2 logs kept in {workdir / 'logs'}")
    assert not problems, "\n".join(problems) + f"\n(logs kept in {workdir})"


@pytest.fixture(scope="module")
def by_node(node, node2, pods) -> dict[str, Pods]:
    return {node.name: pods, node2.name: Pods(node2)}


@pytest.fixture(scope="module")
def scenario_log(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "two-nodes-scenarios.jsonl"


def startup_taint_gone(node2) -> bool:
    taints = node2.taints()
    return taints is not None and not any(t["key"] == STARTUP_TAINT["key"] for t in taints)


@pytest.fixture
def joined(release, node2, pods):
    """Both nodes serve the plugin (node 2 joins here when the join scenario did not run)."""
    if not node2.joined:
        release.ensure(**VALUES)
        node2.join(taint=True)
    if not release.installed():
        install(release, 2, **VALUES)
    wait_rollout(release, 2)
    pods.wait(lambda: startup_taint_gone(node2), "the startup taint lifted from node 2", TAINT_TIMEOUT)
    return node2


class TaintWatch:
    """Polls node 2 and the pods bound to it: was the node seen tainted, when was the taint
    lifted, and was any pod of ``namespace`` bound to it while tainted (pods are read before the
    node, so a pod seen with the taint still on was bound before it was lifted)."""

    def __init__(self, node2, namespace: str) -> None:
        self.node2, self.ns = node2, namespace
        self.seen_tainted = False
        self.lifted_at: float | None = None
        self.violations: set[str] = set()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="taint-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        api = self.node2.cp.api
        while not self.stop_event.wait(0.2):
            try:
                bound = api.call("GET", f"/api/v1/namespaces/{self.ns}/pods"
                                        f"?fieldSelector=spec.nodeName%3D{self.node2.name}")["items"]
                taints = self.node2.taints()
            except Exception:  # noqa: BLE001 - a missed poll is retried
                continue
            if taints is None:
                continue
            if any(t["key"] == STARTUP_TAINT["key"] for t in taints):
                self.seen_tainted = True
                self.violations.update(p["metadata"]["name"] for p in bound)
            elif self.lifted_at is None:
                self.lifted_at = time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def assert_clean(tally) -> None:
    assert tally.failed == 0, f"{tally.failed} injected pods not redirected: {tally.failures}"
    assert not tally.stuck_terminating, f"pods stuck in Terminating: {tally.stuck_terminating}"


def test_join_with_the_startup_taint_while_pods_are_created(release, node, node2, by_node, node_images,
                                                            scenario_log):
    assert not node2.joined, "the join scenario runs first in this module"
    release.ensure(**VALUES)  # one node yet: the single-node waits of node.release apply
    ns = "two-nodes-join"
    churn = Churn("join", ns, by_node, node_images)
    watch = TaintWatch(node2, ns)
    t_join = time.monotonic()
    try:
        # Unconstrained pods: before node 2 is usable they all go to node 1; after, the scheduler
        # spreads them. Go on until enough have run on node 2.
        churn.start(interval=0.5, min_count=30, max_count=60, until=lambda: churn.checked_on(node2.name) >= 8)
        churn.wait_created(3)
        t_join = time.monotonic()
        node2.join(taint=True)
        wait_rollout(release, 2)
        by_node[node.name].wait(lambda: startup_taint_gone(node2), "the startup taint lifted from node 2",
                                TAINT_TIMEOUT)
        churn.thread.join(180)
    finally:
        watch.stop()
        lifted = round(watch.lifted_at - t_join, 1) if watch.lifted_at else None
        tally = churn.finish(scenario_log, taint_lifted_after_join_s=lifted, bound_while_tainted=len(watch.violations))
    assert watch.seen_tainted, "node 2 never showed the startup taint it registered with"
    assert not watch.violations, f"pods bound to node 2 while it had the startup taint: {sorted(watch.violations)}"
    assert_clean(tally)
    assert tally.created >= 30
    assert tally.per_node.get(node2.name, 0) >= 8, f"too few pods ran on node 2 to prove the join: {tally.per_node}"
    assert tally.repaired == 0, f"pods needed a repair although the taint kept them off node 2: {tally}"


def test_second_node_serves_the_plugin_from_the_shared_host_paths(joined, node2, release):
    conflist = json.loads(node2.primary_conflist.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "istio-cni"]
    # Written by node 2's own node program, naming the chart's paths (bound to node 2's dirs).
    assert conflist["plugins"][-1]["cni_agent_run_dir"] == str(node2.first.run_dir)
    assert (node2.cni_bin_dir / "istio-cni").is_file() and (node2.run_dir / "istio-cni-kubeconfig").is_file()
    on = {p["spec"]["nodeName"] for p in release.node_pods()}
    assert on == {node2.first.name, node2.name}


def test_rolling_upgrade_on_both_nodes_while_pods_are_created(joined, release, node, by_node, node_images,
                                                              scenario_log):
    rolled = threading.Event()
    churn = Churn("upgrade", "two-nodes-upgrade", by_node, node_images)
    try:
        churn.start(interval=0.4, min_count=30, max_count=80, until=rolled.is_set)
        churn.wait_created(2)
        level = "info" if release.values.get("logLevel") == "debug" else "debug"
        new = upgrade(release, 2, **{**release.values, "logLevel": level})  # new template: rolls node by node
        rolled.set()
    finally:
        rolled.set()
        tally = churn.finish(scenario_log)
    assert {p["spec"]["nodeName"] for p in new} == {node.name, joined.name}
    assert_clean(tally)
    assert tally.created >= 30


def test_uninstall_and_reinstall_while_pods_are_created_and_deleted(joined, release, node, by_node, node_images,
                                                                    scenario_log):
    reinstalled = threading.Event()
    churn = Churn("reinstall", "two-nodes-reinstall", by_node, node_images, delete_after_check=True)
    values = dict(release.values)
    t_uninstall = t_back = time.monotonic()
    try:
        churn.start(interval=0.5, min_count=30, max_count=80, until=reinstalled.is_set)
        churn.wait_created(6)
        t_uninstall = time.monotonic()
        release.uninstall()
        standins = [is_standin((n.cni_bin_dir / "istio-cni").read_bytes()) for n in (node, joined)]
        install(release, 2, **values)
        t_back = time.monotonic()
        reinstalled.set()
    finally:
        reinstalled.set()
        tally = churn.finish(scenario_log, deleted_while_absent=churn.deleted_between(t_uninstall, t_back),
                             plugin_absent_s=round(t_back - t_uninstall, 1))
    assert standins == [True, True], "uninstall leaves the DEL-only stand-in on every node"
    assert_clean(tally)
    assert tally.created >= 30


def test_primary_cni_rewrites_its_conflist_in_a_loop_while_pods_are_created(joined, by_node, node_images,
                                                                           scenario_log):
    conflist = joined.primary_conflist
    primary = json.loads(conflist.read_text())
    primary["plugins"] = [p for p in primary["plugins"] if p["type"] != "istio-cni"]
    text = json.dumps(primary, indent=2) + "\n"
    stop = threading.Event()
    rewrites, restored_ms = [], []

    def ours_last() -> bool:
        try:
            return json.loads(conflist.read_text())["plugins"][-1]["type"] == "istio-cni"
        except (OSError, ValueError, KeyError, IndexError):
            return False

    def rewrite() -> None:  # as a primary CNI's agent does: by rename, or in place
        while not stop.is_set():
            t0 = time.monotonic()
            if len(rewrites) % 2 == 0:
                tmp = conflist.with_name(f".{conflist.name}.tmp")
                tmp.write_text(text)
                os.replace(tmp, conflist)
            else:
                conflist.write_text(text)
            rewrites.append(t0)
            # How long until the node program has put our entry back (the window a pod could
            # start unredirected in; information, the pods' checks are the test).
            while not ours_last() and time.monotonic() - t0 < CONFLIST_REWRITE_EVERY * 0.9:
                time.sleep(0.002)
            if ours_last():
                restored_ms.append((time.monotonic() - t0) * 1000)
            stop.wait(max(0.0, CONFLIST_REWRITE_EVERY - (time.monotonic() - t0)))

    churn = Churn("conflist", "two-nodes-conflist", by_node, node_images, node_selector=joined.name)
    rewriter = threading.Thread(target=rewrite, name="primary-cni-rewriter", daemon=True)
    try:
        rewriter.start()
        churn.start(interval=0.5, min_count=30, max_count=30)
        churn.thread.join(120)
    finally:
        stop.set()
        rewriter.join(10)

    restored = by_node[joined.name].wait(ours_last, "our entry back in the rewritten conflist", 30)
    restored_ms.sort()
    tally = churn.finish(scenario_log, conflist_rewrites=len(rewrites), entry_restored_within_1s=len(restored_ms),
                         restore_ms_median=round(restored_ms[len(restored_ms) // 2], 1) if restored_ms else None,
                         restore_ms_max=round(restored_ms[-1], 1) if restored_ms else None)
    assert restored
    assert len(rewrites) >= 10, f"only {len(rewrites)} rewrites"
    assert_clean(tally)
    assert tally.per_node == {joined.name: tally.created} and tally.created == 30


def test_burst_of_100_injected_pods_on_one_node(joined, by_node, node_images, scenario_log):
    churn = Churn("burst", "two-nodes-burst", by_node, node_images, node_selector=joined.name, window=BURST_WINDOW)
    try:
        churn.burst(100)
    finally:
        tally = churn.finish(scenario_log)
    assert tally.created == 100
    assert_clean(tally)
    assert tally.per_node == {joined.name: 100}
