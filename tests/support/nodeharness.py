"""A node for agent tests: run dir with the plugin kubeconfig, the agent as a real process,
and helpers to exec the real plugin against real network namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from istio_cni.tools import netns as nsutil

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / ".venv" / "bin" / "istio-cni"
NODE = "node-a"


def netconf(run_dir: Path, **extra) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
            "cni_agent_run_dir": str(run_dir), "agent_timeout_seconds": 2.0,
            "lookup_deadline_seconds": 1.0, "lookup_retry_interval_seconds": 0.2,
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
                           "ips": [{"address": "169.254.7.2/24", "interface": 0}]}}
    conf.update(extra)
    return conf


def plugin_env(netns_name: str, pod: str, namespace: str = "default", command: str = "ADD") -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"c-{netns_name}", "CNI_NETNS": nsutil.path(netns_name), "CNI_IFNAME": "eth0",
            "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};IgnoreUnknown=1",
            "CNI_PATH": "/usr/lib/cni"}


def rules_in(netns_name: str) -> str:
    """Everything netfilter holds in the netns, minus timestamps and counters."""
    out = []
    for cmd in (("iptables-legacy-save",), ("ip6tables-legacy-save",), ("nft", "list", "ruleset")):
        r = nsutil.exec_in(netns_name, *cmd, timeout=30)
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines():
            if line.startswith("#"):
                continue
            if line.startswith(":"):
                line = line.rsplit(" ", 1)[0]  # ":CHAIN POLICY [pkts:bytes]"
            out.append(line)
    return "\n".join(out)


class Node:
    """``api``: the mini API (writes both kubeconfigs), or None with ``agent_kubeconfig`` given
    and the plugin's kubeconfig already written by the caller (real control plane). ``plugin``:
    the executable kubelet would exec (the venv's entry point, or a bundle's compiled front)."""

    def __init__(self, api, tmp: Path, node: str = NODE, agent_kubeconfig: str = "", plugin: Path = PLUGIN) -> None:
        self.api = api
        self.plugin = plugin
        self.node = node
        self.run_dir = tmp / "run"
        self.run_dir.mkdir()
        if api is not None:
            api.kubeconfig(self.run_dir / "istio-cni-kubeconfig")  # what the installer writes for the plugin
            agent_kubeconfig = api.kubeconfig(tmp / "agent-kubeconfig")
        self.agent_kubeconfig = agent_kubeconfig
        self.socket = self.run_dir / "agent.sock"
        self.agent_out = tmp / "agent.out"
        self.agent_err = tmp / "agent.err"
        self.agent: subprocess.Popen | None = None

    def start_agent(self, *extra: str, timeout: float = 60) -> subprocess.Popen:
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "istio_cni_installer.agent", "--run-dir", str(self.run_dir),
             "--node-name", self.node, "--kubeconfig", self.agent_kubeconfig, *extra],
            stdout=open(self.agent_out, "ab"), stderr=open(self.agent_err, "ab"))
        end = time.monotonic() + timeout
        while not self.socket.exists():
            if self.agent.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"agent did not come up:\n{self.agent_err.read_text()[-2000:]}")
            time.sleep(0.05)
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is None or self.agent.poll() is not None:
            return
        os.kill(self.agent.pid, signal.SIGCONT)  # in case a test left it stopped
        self.agent.terminate()
        try:
            self.agent.wait(15)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait(5)

    def add(self, netns_name: str, pod: str, namespace: str = "default", **conf) -> subprocess.CompletedProcess:
        return self.run(plugin_env(netns_name, pod, namespace), conf)

    def run(self, env: dict, conf: dict, wait: bool = True):
        data = json.dumps(netconf(self.run_dir, **conf)).encode()
        if wait:
            return subprocess.run([str(self.plugin)], input=data, env=env, capture_output=True, timeout=60)
        p = subprocess.Popen([str(self.plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        p.stdin.write(data)
        p.stdin.close()
        return p

    def pod_gets(self, pod: str, namespace: str = "default") -> int:
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
        return sum(1 for m, p in self.api.requests if m == "GET" and p.split("?")[0] == path)


# kubelet execs the bundle's compiled front, which serves an ordinary agent-path ADD itself and
# hands everything else to the plugin; the venv entry point is the plugin alone. Same outcomes.
# Fixture ``node`` for the modules that import it: every test using it runs through both.
@pytest.fixture(params=["plugin", "front"], name="node")
def node_each_launcher(request, mini_api, tmp_path):
    plugin = request.getfixturevalue("plugin_bundle").launcher if request.param == "front" else PLUGIN
    n = Node(mini_api, tmp_path, plugin=plugin)
    yield n
    n.stop_agent()
