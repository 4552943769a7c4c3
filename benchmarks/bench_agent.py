"""Whole-process ADD through the node agent vs the direct path (same run), and agent memory.

* ``add-direct-agentbench``: our plugin (bundle launcher), run dir without ``agent.sock``: the
  direct path against the session's API server (``bench_api``), measured here so the ratio
  below always comes from one run.
* ``add-agent``: the same plugin, same netconf and pod, run dir holding a live agent's socket.
  Every round is verified: rules committed in the netns and no fallback in the plugin's log.
  ``extra_info["median_vs_direct_same_run"]`` is agent median / direct median.
* ``concurrent-64-agent-own-share``: 64 ADDs at once through the agent (commits are
  serialised in the agent), the agent at nice -10 to model its own cgroup CPU share on a real
  node (information). The budgeted burst, ``concurrent-64-agent`` (bench_add.py), runs the
  agent at the plugins' priority (one shared cgroup, as on this test machine); both verify
  and count the same way (``bench_add.concurrent_adds_via_agent``: the agent's commit line
  per netns, no fallback, CPU per ADD including the agent's own).
* ``agent-ready-1000-pods``: agent process start until its socket appears (initial list of
  1,000 pods done, modules warm), with the agent's RSS after start-up for 1,000 cached pods
  and for 0 pods (same run) in ``extra_info``.

The agent's own list + watch talks to the mini list/watch API from tests/support (the session
API server may be the GET-only fake, and the plugin's identity may only get pods). It holds
the very pod objects the session API serves; on the agent path the ADD makes no API call at
all (cache hit), so which server the agent watched does not enter the timed figure. The
1,000 pods are realistic sidecar-injected pod JSON (tests/support/injected_pods.py: injector
annotations, istio-proxy env, managedFields) fed through the list, as the API would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest
from bench_add import _bench_single_add, concurrent_adds_via_agent
from harness import REDIRECT_POD
from support.injected_pods import injected_pod
from support.miniapi import MiniAPI

MEDIANS: dict[str, float] = {}
READY_TIMEOUT = 120.0


class AgentProcess:
    """``python -m istio_cni_installer.agent`` watching ``api``; ready once its socket exists."""

    def __init__(self, run_dir: Path, kubeconfig: str, node: str, log_dir: Path, nice: int = 0) -> None:
        self.socket = run_dir / "agent.sock"
        self.log = open(log_dir / f"agent-{time.monotonic_ns()}.log", "ab")
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "istio_cni_installer.agent", "--run-dir", str(run_dir),
             "--node-name", node, "--kubeconfig", kubeconfig],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        end = time.monotonic() + READY_TIMEOUT
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise AssertionError(f"agent not ready (exit {self.proc.returncode}); log {self.log.name}")
            time.sleep(0.01)

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def cpu_seconds(self) -> float:
        """User + system CPU of the agent (all its threads) and of its reaped children."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # after "pid (comm)": state is [0]
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])  # stat fields 14-17
        return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")

    def committed_netns(self) -> set[str]:
        """Netns paths of the agent's own "redirect rules committed" lines (JSON log)."""
        out = set()
        for line in Path(self.log.name).read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == "redirect rules committed" \
                    and entry.get("via") == "agent":
                out.add(entry.get("netns"))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _agent_node(base: Path, bench_api, our_plugin, nice: int):
    """Our plugin with a run dir whose agent.sock belongs to a running agent (generator)."""
    pods = harness.bench_pods()
    with MiniAPI() as api:
        for pod in pods:
            api.put_pod(pod)
        run_dir = base / "run"
        bench_api.write_kubeconfig(run_dir)  # the fallback (direct path) works too
        agent = AgentProcess(run_dir, api.kubeconfig(base / "agent-kubeconfig"), harness.NODE_NAME, base, nice)
        try:
            agent.wait_ready()
            plugin = type(our_plugin)("istio-cni via node agent", our_plugin.bin_dir, run_dir,
                                      our_plugin.launcher)
            plugin.agent = agent
            yield plugin, api
        finally:
            agent.stop()


@pytest.fixture(scope="module")
def agent_plugin(tmp_path_factory, bench_api, our_plugin):
    """The agent at the plugins' own CPU priority (everything here shares one cgroup)."""
    yield from _agent_node(tmp_path_factory.mktemp("agent-node"), bench_api, our_plugin, 0)


@pytest.fixture(scope="module")
def agent_plugin_own_share(tmp_path_factory, bench_api, our_plugin):
    """The agent at nice -10: models a node where the agent's DaemonSet container has its
    own cgroup CPU share, while the runtime's CNI execs compete among themselves. Here all
    processes share one cgroup, so 64 plugin execs would otherwise get 64x the agent's CPU."""
    yield from _agent_node(tmp_path_factory.mktemp("agent-node-nice"), bench_api, our_plugin, -10)


def bench_add_direct_same_run(benchmark, our_plugin, netns_pool, pod_ruleset, record):
    def verify(ns, _pod):
        harness.assert_redirect_committed(ns, pod_ruleset, our_plugin.label)

    assert not (our_plugin.run_dir / "agent.sock").exists()
    _bench_single_add(benchmark, our_plugin, netns_pool, REDIRECT_POD, verify)
    MEDIANS["direct"] = benchmark.stats.stats.median
    record(benchmark, "add-direct-agentbench", launcher=our_plugin.launcher)


def bench_add_via_agent(benchmark, agent_plugin, netns_pool, pod_ruleset, record):
    plugin, api = agent_plugin

    def verify(ns, _pod):
        harness.assert_redirect_committed(ns, pod_ruleset, plugin.label)

    gets_before = sum(1 for m, p in api.requests if m == "GET" and "/pods/" in p)
    results = _bench_single_add(benchmark, plugin, netns_pool, REDIRECT_POD, verify)
    fell_back = [r for r in results if b"falling back" in r.stderr]
    assert not fell_back, f"{len(fell_back)} ADDs fell back to the direct path: {fell_back[0].stderr[-800:]!r}"
    # Cache hits only: the agent made no pod GET while the ADDs ran.
    assert sum(1 for m, p in api.requests if m == "GET" and "/pods/" in p) == gets_before
    median = benchmark.stats.stats.median
    info = {"launcher": plugin.launcher}
    if "direct" in MEDIANS:
        info["median_vs_direct_same_run"] = round(median / MEDIANS["direct"], 3)
        info["direct_median_ms_same_run"] = round(MEDIANS["direct"] * 1e3, 2)
    record(benchmark, "add-agent", **info)


def bench_add_concurrent_64_via_agent_own_share(benchmark, agent_plugin_own_share, netns_pool, pod_ruleset,
                                                record):
    record(benchmark, "concurrent-64-agent-own-share", agent_nice=-10,
           **concurrent_adds_via_agent(benchmark, agent_plugin_own_share, netns_pool, pod_ruleset))


def _many_pods(n: int) -> list[dict]:
    return [injected_pod(f"app-{i:04d}-7c9f8d6b5-x{i % 97:02d}q", namespace=f"team-{i % 20}",
                         node=harness.NODE_NAME, ip=f"198.51.100.{i % 250 + 1}") for i in range(n)]


def bench_agent_ready_and_memory_1000_pods(benchmark, tmp_path, record):
    rss: dict[str, tuple[int, int]] = {}
    with MiniAPI() as api:
        for pod in _many_pods(1000):
            api.put_pod(pod)
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")

        def measure(node: str, key: str, run_dir: Path) -> None:
            agent = AgentProcess(run_dir, kubeconfig, node, tmp_path)
            try:
                agent.wait_ready()
                rss[key] = agent.rss_kb()
            finally:
                agent.stop()

        # 0-pod reference first: same code, same API, a node with no pods.
        empty_dir = tmp_path / "run-empty"
        empty_dir.mkdir()
        measure("node-without-pods", "empty", empty_dir)
        rounds = []

        def setup():
            d = tmp_path / f"run-{len(rounds)}"
            d.mkdir()
            rounds.append(d)
            return (d,), {}

        benchmark.pedantic(lambda d: measure(harness.NODE_NAME, "full", d), setup=setup, rounds=3, iterations=1)
    full_rss, full_hwm = rss["full"]
    empty_rss, _ = rss["empty"]
    record(benchmark, "agent-ready-1000-pods", cached_pods=1000, rss_kb=full_rss, peak_rss_kb=full_hwm,
           rss_kb_0_pods=empty_rss, per_pod_kb=round((full_rss - empty_rss) / 1000, 2),
           pod_source="mini list/watch API, realistic injected pod JSON (tests/support/injected_pods.py)")
