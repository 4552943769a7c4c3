"""Fixtures of the node tier (pytest -m node): one real node for the tier (package scope: it is
stopped after the tier's last test, so it never runs beside the rest of the suite).

``node_images``  the images from tools/images/build.py (cached by content; a failed build fails
                 the tests naming the step and its log)
``node``         etcd, kube-apiserver, controller-manager, scheduler, containerd and kubelet in a
                 private network + mount namespace (node/cluster.py). At the end every process is
                 stopped by PID and the machine's own netns links/addresses/routes/rules, mount
                 table and the sysctls kubelet writes are compared with their state before.
``release``      charts/istio-cni on that node through helm (node/release.py)
``pods``         pod helpers; ``made_pods`` deletes the pods a test created
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from peers.tools import tool_path

from node.cluster import Node, NodeError
from node.pods import Pods
from node.release import Release
from node.sandbox import HostState
from node.scenario import SUMMARY as SCENARIO_SUMMARY

REPO = Path(__file__).resolve().parents[2]
NODE_TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "crictl")
TIMINGS: dict[str, float] = {}


def _images_module():
    spec = importlib.util.spec_from_file_location("istio_cni_test_images", REPO / "tools" / "images" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="package")
def node_images() -> dict[str, tuple[str, Path]]:
    if os.geteuid() != 0:
        pytest.fail("the node tier runs as root (make test)")
    images = _images_module()
    built = images.ensure_all()
    missing = [n for n in images.NAMES if n not in built]
    if missing:
        why = []
        for n in missing:
            status = (images.IMAGES / f"{n}.status")
            log = images.IMAGES / f"{n}.build.log"
            text = status.read_text().strip() if status.exists() else "never built"
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:]) if log.exists() else ""
            why.append(f"image {n}: {text} (tools/images/build.py; log {log}):\n{tail}")
        pytest.fail("\n".join(why), pytrace=False)
    return built


@pytest.fixture(scope="package")
def node(node_images):
    bins = {n: tool_path(n) for n in NODE_TOOLS}
    before = HostState.capture()
    workdir = Path(tempfile.mkdtemp(prefix="istio-cni-node-", dir="/tmp"))
    n = Node(workdir, bins, node_images)
    try:
        try:
            n.start()
        except NodeError as e:
            pytest.fail(f"the test node did not start: {e}", pytrace=False)
        TIMINGS["node_up"] = n.timings["node_up"]
        TIMINGS["image_import"] = n.timings.get("image_import", 0.0)
        yield n
    finally:
        problems = []
        try:
            n.stop()
        except NodeError as e:
            problems.append(str(e))
        after = HostState.capture()
        changed = before.diff(after)
        if changed:
            problems.append(f"the node tier changed the machine's own namespaces:\n{changed}")
        if not problems:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # keep the logs for the post-mortem, not the runtime's gigabyte of state
            for big in ("containerd", "kubelet", "control-plane/etcd-data"):
                shutil.rmtree(workdir / big, ignore_errors=True)
        assert not problems, "\n".join(problems) + f"\n(logs kept in {workdir})"


@pytest.fixture(scope="package")
def pods(node) -> Pods:
    return Pods(node)


@pytest.fixture(scope="package")
def release(node, pods, node_images) -> Release:
    r = Release(node, pods, tool_path("helm"), node_images["node"][0])
    yield r
    TIMINGS.update(r.timings)


@pytest.fixture
def made_pods(pods):
    """``made_pods(manifest) -> pod``: create; every pod made is deleted (through kubelet) after."""
    made: list[tuple[str, str]] = []

    def make(manifest: dict) -> dict:
        md = manifest["metadata"]
        pods.ensure_namespace(md["namespace"])
        made.append((md["namespace"], md["name"]))
        return pods.create(manifest)

    yield make
    for ns, name in made:
        pods.delete(ns, name)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("node tier timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
    for line in SCENARIO_SUMMARY:
        terminalreporter.write_line(line)
