"""The pod-start cost kubelet sees: ``RunPodSandbox`` through containerd's CRI on a real node.

One node of the node tier (tests/node: containerd 1.6 + runc + the bridge primary CNI, in a
private network and mount namespace; see tests/node/cluster.py) and its control plane. Each
round runs ``crictl runp`` once per variant, in rotating order, each timed from exec to exit:

* ``primary``       the node's conflist with the bridge primary alone
* ``direct``        + our plugin (installer bundle, built by the node image's interpreter as the
                    image builds it, and its front in the node's CNI bin dir), its
                    ``cni_agent_run_dir`` without ``agent.sock``: the direct path
* ``agent``         + our plugin, ``cni_agent_run_dir`` holding a live node agent's socket
                    (``python -m istio_cni_installer.agent`` inside the node, watching the API)
* ``upstream-go``   + upstream's Go istio-cni (the peer built by tools/go-tools.sh)

Between variants the conflist is swapped (atomic rename) and the round waits, untimed, until
containerd's CRI reports that very conflist loaded (``crictl info``). Every sandbox is checked
(untimed): our/upstream's rules in its netns or none for the primary alone, and for the agent
variant the agent's own "redirect rules committed" line for that netns (no fallback).
``crictl stopp`` + ``rmp`` (CNI DEL through the same conflist) follow, untimed, and the next
variant starts once the machine is quiet again (``harness.settle``, untimed: the kernel tears a
deleted netns down on a worker for a few ms after ``rmp`` returned).

Which pod: an injected pod object (``harness.sidecar_pod``) in the API, bound to a node name
that does not exist (``harness.NODE_NAME``), so no kubelet ever owns it; the sandbox carries that
pod's name, namespace and UID (the runtime passes ``K8S_POD_UID``; the agent's cache checks it),
and a fresh ``attempt`` per round. kubelet itself is stopped for this benchmark: a sandbox it does
not know would otherwise be killed by its housekeeping mid-measurement. The node's API server,
containerd and everything else keep running.

Information only: ``bench_pod_create_to_running_paired`` (runs first, kubelet up) creates injected
pods (app + istio-proxy, no validation init container, so the primary alone runs them too)
through the API and times creation to Running and ready, same variants (a second agent watches
the real node for it).

Roles for benchmarks/check_budgets.py: ``sandbox-paired`` (per-variant medians, p99 and the
latency each plugin adds over the primary alone, in ``extra_info``; budgets) and
``pod-running-paired`` (information). "Added" is the median over
rounds of (variant - primary alone, same round): paired differences, so the machine's load swings
between rounds cancel out.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import pytest
from node.cluster import NODE_NAME, Node, spawn, stop_process
from node.conftest import NODE_TOOLS, node_images  # noqa: F401 - node_images: the node tier's fixture
from node.pods import has_istio_rules
from node.sandbox import HostState
from peers.tools import tool_path

ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_SANDBOX_ROUNDS", "30"))
VARIANTS = ("primary", "direct", "agent", "upstream-go")
GHOST_NODE = harness.NODE_NAME  # no such node registers: the pod is nobody's
POD = "bench-sandbox"
LOAD_TIMEOUT = 30.0
NODE_API_NOTE = "the test node's etcd + kube-apiserver (tests/node), plugins' token may only get pods"


class SandboxNode:
    """The node prepared for the benchmark: plugins in place, conflist per variant, agent up."""

    def __init__(self, test_node, base: Path) -> None:
        self.node, self.base = test_node, base
        self.original = test_node.primary_conflist.read_text()
        self.conflists: dict[str, dict] = {}
        self.agents: list = []
        self.agent_log = base / "agent.log"  # the CRI benchmark's agent (watching GHOST_NODE)
        self.uid = ""
        self.attempt = 0
        self.bundle_built_by = ""

    # -- set-up ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        cp = self.node.cp
        api = cp.api
        for ns in (harness.POD_NAMESPACE, "istio-system"):
            api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": ns}}, ok=(201, 409))
        pod = harness.sidecar_pod(POD)
        pod["metadata"].pop("uid")
        pod.pop("status")
        self.uid = api.create_pod(pod)["metadata"]["uid"]
        token, _ = api.limited_identity(
            "istio-system", "istio-cni-bench", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            self.base / "identity-kubeconfig")
        from peers.kubeapi import write_kubeconfig

        runs = {v: self.base / f"run-{v}" for v in ("direct", "agent", "agent-node", "upstream-go")}
        for run in runs.values():
            run.mkdir(parents=True)
            write_kubeconfig(run / "istio-cni-kubeconfig", cp.server, cp.ca_file, token, "istio-cni")
        self._plugins()
        primary = json.loads(self.original)
        self.conflists["primary"] = primary
        for variant, plugin_type in (("direct", "istio-cni"), ("agent", "istio-cni"), ("agent-node", "istio-cni"),
                                     ("upstream-go", "istio-cni-upstream")):
            entry = harness.netconf(str(runs[variant]), None)
            for key in ("cniVersion", "name"):
                entry.pop(key)
            entry["type"] = plugin_type
            self.conflists[variant] = {**primary, "plugins": [*primary["plugins"], entry]}
        # Two node agents: one watching the node name the CRI benchmark's pod is bound to, one
        # watching the real node for the pods kubelet starts (each finds its pods in its cache).
        self._start_agent(runs["agent"], GHOST_NODE, "agent")
        self._start_agent(runs["agent-node"], NODE_NAME, "agent-node")

    def stop_kubelet(self) -> None:
        """For the CRI benchmark: kubelet would kill sandboxes of pods it does not know."""
        if "kubelet" in self.node.procs:
            stop_process(self.node.procs.pop("kubelet"))

    def _plugins(self) -> None:
        from peers.tools import CACHE, build_failure

        from istio_cni_installer.binaries import Binaries

        why = build_failure("istio-cni")
        if why:
            pytest.skip(f"upstream Go istio-cni unavailable: {why}")
        bin_dir = str(self.node.cni_bin_dir)
        # The bundle as the node image ships it (Debian's python3.11), like bench_add's.
        path, self.bundle_built_by = harness.shipped_bundle(self.base / "bundle", self.base / "shim")
        Binaries(path, mounted=bin_dir, host=bin_dir).ensure()
        shutil.copy2((CACHE / "bin" / "istio-cni").resolve(), self.node.cni_bin_dir / "istio-cni-upstream")

    def _start_agent(self, run_dir: Path, node_name: str, log: str) -> None:
        agent = spawn(self.base, log, [
            *self.node.holder.prefix(), sys.executable, "-m", "istio_cni_installer.agent", "--run-dir", str(run_dir),
            "--node-name", node_name, "--kubeconfig", str(self.node.cp.kubeconfig)])
        self.agents.append(agent)
        end = time.monotonic() + 60
        while not (run_dir / "agent.sock").exists():
            if agent.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"node agent not ready (exit {agent.poll()}): "
                                     f"{(self.base / f'{log}.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        for agent in self.agents:
            stop_process(agent)
        self.node.crictl("rmp", "--force", "--all", timeout=90, check=False)
        self._write(json.loads(self.original))

    # -- one round --------------------------------------------------------------------------------
    def _write(self, conf: dict) -> None:
        path = self.node.primary_conflist
        tmp = path.with_name(f".{path.name}.tmp")  # not a .conf/.conflist name: never loaded
        tmp.write_text(json.dumps(conf, indent=2) + "\n")
        os.rename(tmp, path)

    def _loaded(self) -> dict | None:
        info = json.loads(self.node.crictl("info").stdout)
        for net in (info.get("cniconfig") or {}).get("Networks") or []:
            if net.get("IFName") == "eth0":
                return json.loads(net["Config"]["Source"])
        return None

    def use(self, variant: str) -> None:
        """Swap the conflist to ``variant``'s and wait until containerd has loaded it."""
        want = self.conflists[variant]
        if self._loaded() == want:
            return
        self._write(want)
        end = time.monotonic() + LOAD_TIMEOUT
        while self._loaded() != want:
            if time.monotonic() > end:
                raise AssertionError(f"containerd did not load the {variant} conflist in {LOAD_TIMEOUT}s")
            time.sleep(0.02)

    def sandbox_config(self) -> Path:
        self.attempt += 1
        cfg = self.base / "sandbox.json"
        cfg.write_text(json.dumps({
            "metadata": {"name": POD, "namespace": harness.POD_NAMESPACE, "uid": self.uid, "attempt": self.attempt},
            "linux": {"cgroup_parent": f"{self.node.cgroup_root}/bench-sandbox"},
        }))
        return cfg

    def run_sandbox(self, cfg: Path) -> tuple[float, str]:
        t0 = time.perf_counter()
        out = self.node.crictl("runp", str(cfg), check=False, timeout=120)
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            raise AssertionError(f"crictl runp failed ({out.returncode}): {out.stderr[-2000:]}")
        return seconds, out.stdout.strip()

    def verify_and_remove(self, variant: str, sandbox: str) -> None:
        try:
            info = json.loads(self.node.crictl("inspectp", sandbox).stdout)
            netns = next(ns["path"] for ns in info["info"]["runtimeSpec"]["linux"]["namespaces"]
                         if ns["type"] == "network")
            rules = "".join(self.node.holder.run("nsenter", f"--net={netns}", *cmd, check=False).stdout
                            for cmd in (("iptables-legacy-save",), ("nft", "list", "ruleset")))
            if has_istio_rules(rules) != (variant != "primary"):
                raise AssertionError(f"{variant}: the sandbox's netns {'lacks' if variant != 'primary' else 'has'} "
                                     f"istio rules:\n{rules[-1500:]}")
            if variant == "agent":
                committed = [line for line in self.agent_log.read_text(errors="replace").splitlines()
                             if "redirect rules committed" in line and netns in line]
                if not committed:
                    raise AssertionError(f"agent variant: no agent commit for {netns}: the plugin fell back")
        finally:
            self.node.crictl("stopp", sandbox, check=False)
            self.node.crictl("rmp", sandbox, check=False)


@pytest.fixture(scope="module")
def bench_node(node_images):  # noqa: F811 - node_images: the node tier's fixture
    """A node of the node tier for this module only (not running under the other benchmarks);
    like the tier, it must leave the machine's own namespaces as they were."""
    before = HostState.capture()
    workdir = Path(tempfile.mkdtemp(prefix="istio-cni-node-", dir="/tmp"))
    n = Node(workdir, {t: tool_path(t) for t in NODE_TOOLS}, node_images)
    n.start()
    try:
        yield n
    finally:
        n.stop()
        changed = before.diff(HostState.capture())
        assert not changed, f"the sandbox benchmark changed the machine's own namespaces:\n{changed}"
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox_node(bench_node, tmp_path_factory):
    sn = SandboxNode(bench_node, Path(tmp_path_factory.mktemp("sandbox-bench")))
    try:
        sn.prepare()
        yield sn
    finally:
        sn.close()


API_ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_API_POD_ROUNDS", "5"))
POLL = 0.05  # s between GETs while waiting for Running: the resolution of that figure
API_VARIANTS = {"primary": "primary", "direct": "direct", "agent": "agent-node", "upstream-go": "upstream-go"}


def _api_pod(name: str, workload_image: str) -> dict:
    """An injected pod as kubelet runs it (app + istio-proxy, sidecar annotation), without the
    istio-validation init container: the primary-alone variant must reach Running too."""
    pod = harness.sidecar_pod(name)
    for key in ("uid",):
        pod["metadata"].pop(key)
    pod.pop("status")
    spec = pod["spec"]
    spec.pop("nodeName")  # the scheduler binds it to the node, as for any pod
    spec.update(terminationGracePeriodSeconds=1, enableServiceLinks=False)
    spec["containers"] = [
        {"name": "app", "image": workload_image, "imagePullPolicy": "Never",
         "command": ["workload", "app", "--port", "8080"]},
        {"name": "istio-proxy", "image": workload_image, "imagePullPolicy": "Never",
         "command": ["workload", "proxy", "--ports", "15001,15006,15021"],
         "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True}},
    ]
    return pod


def _running_and_ready(pod: dict | None) -> bool:
    status = (pod or {}).get("status", {})
    return status.get("phase") == "Running" and all(c.get("ready") for c in status.get("containerStatuses", []))


def bench_pod_create_to_running_paired(benchmark, sandbox_node, node_images, record):  # noqa: F811
    """Information: pod creation through the API until Running and ready (scheduler, kubelet,
    sandbox, both containers), per variant, paired rounds in rotating order. Runs before the CRI
    benchmark, which stops kubelet."""
    from node.pods import Pods

    pods = Pods(sandbox_node.node)
    api = sandbox_node.node.cp.api
    samples: dict[str, list[float]] = {v: [] for v in API_VARIANTS}
    made = iter(range(10**6))

    def one(variant: str) -> float:
        sandbox_node.use(API_VARIANTS[variant])
        name = f"api-{variant}-{next(made)}"
        t0 = time.perf_counter()
        api.create_pod(_api_pod(name, node_images["workload"][0]))
        pods.wait(lambda: _running_and_ready(pods.get(harness.POD_NAMESPACE, name)), f"pod {name} Running and ready",
                  120, interval=POLL)
        seconds = time.perf_counter() - t0
        try:
            if has_istio_rules(pods.rules(harness.POD_NAMESPACE, name)) != (variant != "primary"):
                raise AssertionError(f"API pod, {variant}: istio rules "
                                     f"{'missing' if variant != 'primary' else 'present'}")
        finally:
            pods.delete(harness.POD_NAMESPACE, name, timeout=120)
        return seconds

    def one_round():
        start = sum(len(s) for s in samples.values()) // len(API_VARIANTS)
        order = list(API_VARIANTS)
        for variant in order[start % len(order):] + order[:start % len(order)]:
            samples[variant].append(one(variant))

    benchmark.pedantic(one_round, rounds=API_ROUNDS, warmup_rounds=1, iterations=1)
    ms = {v: [s * 1e3 for s in samples[v][1:]] for v in API_VARIANTS}
    record(benchmark, "pod-running-paired",
           api_pod_medians_ms={v: round(statistics.median(x), 1) for v, x in ms.items()},
           api_pod_added_ms={v: round(statistics.median(a - b for a, b in zip(ms[v], ms["primary"], strict=True)), 1)
                             for v in API_VARIANTS if v != "primary"},
           api_pod_rounds=len(ms["primary"]), note=f"information only: create -> Running+ready, polled every {POLL} s")
    benchmark.extra_info.update(api_server="node", api_server_note=NODE_API_NOTE)


def bench_run_pod_sandbox_paired(benchmark, sandbox_node, record):
    """Every variant once per round, rotating the order, so all see the same machine load."""
    sandbox_node.stop_kubelet()
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    settled: list[float] = []

    def one_round():
        start = sum(len(s) for s in samples.values()) // len(VARIANTS)
        for variant in VARIANTS[start % len(VARIANTS):] + VARIANTS[:start % len(VARIANTS)]:
            sandbox_node.use(variant)
            # Untimed: not on the kernel's teardown of the last sandbox's netns (harness.settle).
            settled.append(harness.settle())
            seconds, sandbox = sandbox_node.run_sandbox(sandbox_node.sandbox_config())
            sandbox_node.verify_and_remove(variant, sandbox)
            samples[variant].append(seconds)

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ms = {v: [s * 1e3 for s in samples[v][1:]] for v in VARIANTS}  # [0]: the warm-up round
    medians = {v: round(statistics.median(x), 2) for v, x in ms.items()}
    p99 = {v: round(harness.percentile(x, 99), 2) for v, x in ms.items()}
    # Added latency: the median over rounds of (variant - primary) within the same round, so a
    # load swing between rounds cancels out (the medians' difference is kept for information).
    added = {v: round(statistics.median(a - b for a, b in zip(ms[v], ms["primary"], strict=True)), 2)
             for v in VARIANTS if v != "primary"}
    median_diff = {v: round(medians[v] - medians["primary"], 2) for v in VARIANTS if v != "primary"}
    record(benchmark, "sandbox-paired", sandbox_medians_ms=medians, sandbox_p99_ms=p99,
           sandbox_added_ms=added, sandbox_medians_minus_primary_ms=median_diff, sandbox_rounds=len(ms["primary"]),
           settle_ms_median=round(statistics.median(settled) * 1e3, 1), settle_ms_max=round(max(settled) * 1e3, 1),
           bundle_built_by=sandbox_node.bundle_built_by,
           runtime="containerd 1.6 CRI via crictl runp, bridge primary, kubelet stopped")
    # This benchmark's API server is the node's own (etcd + kube-apiserver inside the node's netns).
    benchmark.extra_info.update(api_server="node", api_server_note=NODE_API_NOTE)
