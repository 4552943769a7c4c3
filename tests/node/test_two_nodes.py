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
import shutil
import tempfile
from pathlib import Path

import pytest

from node.cluster import NodeError
from node.pods import Pods
from node.twonode import STARTUP_TAINT, SecondNode, install, wait_rollout

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.two_nodes, pytest.mark.timeout(900)]

VALUES = {"taint": {"enabled": True}}  # the node program lifts the startup taint of a joining node
TAINT_TIMEOUT = 120.0
CONFLIST_REWRITE_EVERY = 1.0


@pytest.fixture(scope="module")
def node2(node):
    workdir = Path(tempfile.mkdtemp(prefix="istio-cni-node2-", dir="/tmp"))
    second = SecondNode(workdir, node)
    problems = []
    try:
        try:
            second.prepare()
        except NodeError as e:
            pytest.fail(f"the second node could not be prepared: {e}", pytrace=False)
        yield second
    finally:
        try:
            second.stop()
        except NodeError as e:
            problems.append(str(e))
        if not problems:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for big in ("containerd", "kubelet"):
                shutil.rmtree(workdir / big, ignore_errors=True)
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


def test_second_node_serves_the_plugin_from_the_shared_host_paths(joined, node2, release):
    conflist = json.loads(node2.primary_conflist.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "istio-cni"]
    # Written by node 2's own node program, naming the chart's paths (bound to node 2's dirs).
    assert conflist["plugins"][-1]["cni_agent_run_dir"] == str(node2.first.run_dir)
    assert (node2.cni_bin_dir / "istio-cni").is_file() and (node2.run_dir / "istio-cni-kubeconfig").is_file()
    on = {p["spec"]["nodeName"] for p in release.node_pods()}
    assert on == {node2.first.name, node2.name}
