"""charts/istio-cni deployed on the test node the way a user does it: ``helm install`` with the
locally built image (hub ``localhost``, pull policy ``Never``: the image is on the node, there is
no registry) and the chart's directory values pointed at the node's CNI and run dirs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from node.cluster import Node
from node.pods import Pods

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "istio-cni"
RELEASE, NAMESPACE, DAEMONSET = "istio-cni", "istio-system", "istio-cni-node"
DS_READY_TIMEOUT = 120.0


class Release:
    def __init__(self, node: Node, pods: Pods, helm_bin: Path, image_ref: str) -> None:
        self.node, self.pods, self.helm_bin = node, pods, helm_bin
        repo, tag = image_ref.rsplit(":", 1)
        hub, image = repo.rsplit("/", 1)
        self.base_values = {
            "hub": hub, "image": image, "tag": tag, "pullPolicy": "Never",
            "cniBinDir": str(node.cni_bin_dir), "cniConfDir": str(node.cni_conf_dir),
            "cniNetnsDir": str(node.netns_dir), "cniAgentRunDir": str(node.run_dir),
        }
        self.home = node.dir / "helm-home"
        self.values: dict = {}
        self.timings: dict[str, float] = {}
        self._n = 0

    # -- helm ---------------------------------------------------------------------------------------
    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {"HOME": str(self.home), "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"), "HELM_DATA_HOME": str(self.home / "data"),
               "KUBECONFIG": str(self.node.cp.kubeconfig), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        argv = [*self.node.holder.prefix(), "env", *(f"{k}={v}" for k, v in env.items()), str(self.helm_bin), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n"
                                 f"{self.node.diagnostics()}")
        return proc

    def _values_file(self, overrides: dict) -> str:
        self._n += 1
        f = self.home / f"values-{self._n}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({**self.base_values, **overrides}))
        return str(f)

    def installed(self) -> bool:
        out = self.helm("list", "-n", NAMESPACE, "-q", "--all")
        return RELEASE in out.stdout.split()

    def install(self, **overrides) -> None:
        t0 = time.monotonic()
        self.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                  "--values", self._values_file(overrides))
        self.values = overrides
        self.wait_ready()
        self.timings["install_to_ready"] = time.monotonic() - t0

    def upgrade(self, **overrides) -> None:
        self.helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--values", self._values_file(overrides))
        self.values = overrides

    def uninstall(self) -> None:
        self.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "90s")
        # --wait covers the API objects; the node program's shutdown (removing the plugin) is
        # over once its pod is gone from the node.
        self.pods.wait(lambda: not self.node_pods(), "the istio-cni node pod to terminate", DS_READY_TIMEOUT)
        self.values = {}

    def ensure(self, **overrides) -> None:
        """Installed with exactly ``overrides`` and the node pod Ready (no-op when already so)."""
        if self.installed():
            if self.values != overrides:
                self.upgrade(**overrides)
                self.wait_rolled()
            else:
                self.wait_ready()
            return
        self.install(**overrides)

    def ensure_absent(self) -> None:
        if self.installed():
            self.uninstall()

    # -- state --------------------------------------------------------------------------------------
    def daemonset(self) -> dict:
        return self.node.cp.api.get_daemonset(NAMESPACE, DAEMONSET)

    def node_pods(self) -> list[dict]:
        return self.pods.list(NAMESPACE, f"k8s-app={DAEMONSET}")

    def ready_pod(self) -> dict | None:
        for pod in self.node_pods():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True":
                return pod
        return None

    def ready_now(self) -> dict | None:
        """The Ready node pod when the DaemonSet has fully rolled out on the node, else None."""
        ds = self.daemonset()
        st = ds.get("status", {})
        done = (st.get("observedGeneration") == ds["metadata"]["generation"]
                and st.get("desiredNumberScheduled") == 1 and st.get("numberReady") == 1
                and st.get("updatedNumberScheduled") == 1 and len(self.node_pods()) == 1)
        return self.ready_pod() if done else None

    def wait_ready(self) -> dict:
        return self.pods.wait(self.ready_now, "DaemonSet istio-cni-node ready on the node", DS_READY_TIMEOUT)

    def wait_rolled(self, old_uid: str | None = None) -> dict:
        """After an upgrade: one Ready pod of the new template (not ``old_uid``)."""
        def rolled():
            pod = self.ready_now()
            return pod if pod and pod["metadata"]["uid"] != old_uid else None
        return self.pods.wait(rolled, "the DaemonSet to roll to a new Ready pod", DS_READY_TIMEOUT)

    def pod_log(self, pod: dict) -> str:
        """The install-cni container's log from kubelet's podLogsDir (API logs need kubelet's
        serving endpoint, which this node does not expose)."""
        md = pod["metadata"]
        d = self.node.pod_logs / f"{md['namespace']}_{md['name']}_{md['uid']}" / "install-cni"
        return "".join(p.read_text(errors="replace") for p in sorted(d.glob("*.log")))


def log_records(text: str) -> list[dict]:
    """JSON log records out of a CRI log file (``<time> <stream> <P|F> <line>``)."""
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4:
            try:
                rec = json.loads(parts[3])
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") if want else line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
