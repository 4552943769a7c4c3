"""A second real node against the first node's control plane, for the two-node scenarios
(pytest -m two_nodes), and the DaemonSet waits that count nodes.

The second node is a ``cluster.Node`` with its own holder (network + mount namespace), workdir,
containerd, kubelet, cgroup root, node IP (``SECOND_IP``) and pod range (``SECOND_POD_CIDR``).
It is prepared first (namespaces, link to the first node, containerd with the images imported)
and joins later, when a test starts its kubelet, optionally registering with the startup taint,
as an autoscaled node does.

One DaemonSet serves both nodes, so the chart's host paths (CNI bin/conf dir, agent run dir,
runtime netns dir) must be the same on both: inside the second node's mount namespace its own
dirs are bind-mounted over the first node's paths, and its containerd is configured with those
paths (``in_node``). The test process reads the second node's files at their own host paths.

The nodes reach each other through a veth pair between the two network namespaces (routes to
the other node's IP and pod range; nothing in the machine's own netns). The second node's
``kubernetes`` Service DNAT points at the API server on the first node.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from peers.kubeapi import write_kubeconfig

from node.cluster import NODE_IP, Node, NodeError
from node.release import CHART, NAMESPACE, RELEASE, Release

SECOND_NAME = "istio-cni-test-node-2"
SECOND_IP = "192.0.2.211"
# Documentation range, disjoint from the node IPs (192.0.2.210/.211) and the first node's pods;
# 125 addresses: the burst scenario puts 100 pods on this node at once.
SECOND_POD_CIDR = "192.0.2.0/25"
SECOND_POD_GATEWAY = "192.0.2.1"
SECOND_MAX_PODS = 120
STARTUP_TAINT = {"key": "cni.istio.io/not-ready", "effect": "NoSchedule"}  # the chart's taint.key
# veth ends, each inside one node's netns (never in the machine's own).
LINK_IN_FIRST, LINK_IN_SECOND = "istio-to-node2", "istio-to-node1"
JOIN_TIMEOUT = 120.0
ROLLOUT_TIMEOUT = 180.0


class SecondNode(Node):
    """``SecondNode(workdir, first).prepare()``, later ``join(taint=...)``; always ``stop()``."""

    def __init__(self, workdir: Path, first: Node) -> None:
        super().__init__(workdir, first.bins, first.images, name=SECOND_NAME, ip=SECOND_IP,
                         pod_cidr=SECOND_POD_CIDR, pod_gateway=SECOND_POD_GATEWAY)
        self.first = first
        self.max_pods = SECOND_MAX_PODS
        # own dir (host path) -> the first node's path it appears at inside this node
        self.binds = {self.cni_bin_dir: first.cni_bin_dir, self.cni_conf_dir: first.cni_conf_dir,
                      self.run_dir: first.run_dir, self.containerd_dir / "state": first.containerd_dir / "state"}
        self.netns_dir = first.netns_dir  # as this node's runtime names it (the chart's cniNetnsDir)
        self.joined = False

    def in_node(self, path: Path) -> Path:
        return self.binds.get(path, path)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Node:
        self.prepare()
        self.join(taint=False)
        return self

    def prepare(self) -> SecondNode:
        """Everything but kubelet: the node exists, has its runtime and images, is not registered."""
        t0 = time.monotonic()
        for d in (self.logs, self.containerd_dir, self.kubelet_dir, self.pod_logs, *self.binds, *self.binds.values()):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self.holder.start()
            for own, shown_at in self.binds.items():  # in this node's mount namespace only
                self.holder.run("mount", "--bind", str(own), str(shown_at))
            self._network()
            self._link()
            self.cp = self.first.cp
            self.kubeconfig = write_kubeconfig(self.dir / "kubelet.kubeconfig", f"https://{NODE_IP}:{self.cp.port}",
                                               self.cp.ca_file, self.cp.token, self.cp.ADMIN_USER)
            self._service_dnat()
            self._cni()
            self._containerd()
            self._import_all()  # before kubelet: a joining node must not pull (there is no registry)
        except BaseException:
            self.stop()
            raise
        self.timings["prepare"] = time.monotonic() - t0
        return self

    def join(self, *, taint: bool) -> None:
        """Start kubelet; returns once the node is Ready (with the startup taint still on, if asked)."""
        t0 = time.monotonic()
        self.register_with_taints = [STARTUP_TAINT] if taint else []
        self._kubelet()
        self.joined = True
        self._wait_node_ready(time.monotonic() + JOIN_TIMEOUT)
        self.timings["join_to_ready"] = time.monotonic() - t0

    def stop(self) -> None:
        """Node.stop without the control plane (the first node's), then forget the node in the API:
        its Node object and the pods bound to it (no kubelet is left to confirm their deletion)."""
        cp, self.cp = self.cp, None
        errors = []
        try:
            super().stop()
        except NodeError as e:
            errors.append(str(e))
        finally:
            self.cp = cp
        if self.first.holder.proc and self.first.holder.proc.poll() is None:
            self.first.holder.run("ip", "link", "del", LINK_IN_FIRST, check=False)
        if cp is not None and self.joined:
            try:
                self._forget(cp.api)
            except Exception as e:  # noqa: BLE001 - reported with the rest
                errors.append(f"forget the node in the API: {type(e).__name__}: {e}")
        if errors:
            raise NodeError("; ".join(errors))

    def _forget(self, api) -> None:
        api.call("DELETE", f"/api/v1/nodes/{self.name}", ok=(200, 202, 404))
        now = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = api.call("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.name}")["items"]
            if not left:
                return
            for pod in left:
                md = pod["metadata"]
                api.call("DELETE", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}", now, ok=(200, 202, 404))
            time.sleep(0.5)
        raise NodeError(f"pods still bound to {self.name} after 60s")

    def _link(self) -> None:
        """veth between the two nodes' netns; routes to the other node's IP and pod range."""
        first, me = self.first.holder, self.holder
        first.run("ip", "link", "add", LINK_IN_FIRST, "type", "veth", "peer", "name", LINK_IN_SECOND,
                  "netns", str(me.pid))
        first.run("ip", "link", "set", LINK_IN_FIRST, "up")
        first.run("ip", "route", "add", f"{self.ip}/32", "dev", LINK_IN_FIRST, "src", self.first.ip)
        first.run("ip", "route", "add", self.pod_cidr, "via", self.ip, "dev", LINK_IN_FIRST, "onlink")
        me.run("ip", "link", "set", LINK_IN_SECOND, "up")
        me.run("ip", "route", "add", f"{self.first.ip}/32", "dev", LINK_IN_SECOND, "src", self.ip)
        me.run("ip", "route", "add", self.first.pod_cidr, "via", self.first.ip, "dev", LINK_IN_SECOND, "onlink")
        # Pods here reach the API (the Service DNAT) through the first node: forwarded by this netns.
        me.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    # -- state ------------------------------------------------------------------------------------
    def taints(self) -> list[dict] | None:
        """The node's taints as the API has them; None while it is not registered."""
        code, body = self.cp.api.raw("GET", f"/api/v1/nodes/{self.name}")
        if code == 404:
            return None
        if code != 200:
            raise NodeError(f"GET node {self.name} -> {code}: {body[:300]}")
        return json.loads(body)["spec"].get("taints") or []


# -- the DaemonSet across nodes (node.release's waits assume one node) -----------------------------
def rollout_done(release: Release, nodes: int, old_uids: frozenset = frozenset()) -> list[dict] | None:
    """The node pods when the DaemonSet is rolled out on ``nodes`` nodes, none of ``old_uids``, every
    one Ready; else None."""
    ds = release.daemonset()
    st = ds.get("status", {})
    if not (st.get("observedGeneration") == ds["metadata"]["generation"] and st.get("desiredNumberScheduled") == nodes
            and st.get("numberReady") == nodes and st.get("updatedNumberScheduled") == nodes):
        return None
    pods = release.node_pods()
    if len(pods) != nodes or any(p["metadata"].get("deletionTimestamp") or p["metadata"]["uid"] in old_uids
                                 for p in pods):
        return None
    for p in pods:
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        if conds.get("Ready") != "True":
            return None
    return pods


def wait_rollout(release: Release, nodes: int, old_uids: frozenset = frozenset()) -> list[dict]:
    return release.pods.wait(lambda: rollout_done(release, nodes, old_uids),
                             f"DaemonSet rolled out and Ready on {nodes} nodes", ROLLOUT_TIMEOUT)


def upgrade(release: Release, nodes: int, **values) -> list[dict]:
    """``helm upgrade`` to ``values``; returns the new node pods once every node has one Ready."""
    old = frozenset(p["metadata"]["uid"] for p in release.node_pods())
    release.upgrade(**values)
    return wait_rollout(release, nodes, old)


def install(release: Release, nodes: int, **values) -> list[dict]:
    release.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                 "--values", release._values_file(values))
    release.values = values
    return wait_rollout(release, nodes)
