"""The compiled front on the agent path, with a real agent process and real network namespaces.

An ordinary ADD is answered by the front alone: proven with a front whose interpreter does not
exist (any hand-over would print the front's code-999 error instead). Its stdout is byte for
byte what the plugin prints for the same ADD. What the front must leave to the plugin (an
excluded namespace, a version conversion, an agent error) reaches the plugin, which answers
exactly as without the front, and the agent is asked once per ADD.
"""

from __future__ import annotations

import json

import pytest
from support.injected_pods import injected_pod, uninjected_pod
from support.nodeharness import PLUGIN, Node, netconf, plugin_env, rules_in

from istio_cni_installer.binaries import front_config
from istio_cni_installer.bundle import read_manifest
from istio_cni_installer.front import configure

pytestmark = pytest.mark.root
ADDR = ("192.0.2.7/24",)


def _front(plugin_bundle, path, python: str | None = None):
    m = read_manifest(plugin_bundle.bundle_dir)
    config = front_config(str(plugin_bundle.bundle_dir), m)
    if python is not None:
        config["python"] = python
    path.write_bytes(configure((plugin_bundle.bundle_dir / m["front"]).read_bytes(), config))
    path.chmod(0o755)
    return path


@pytest.fixture
def node(mini_api, tmp_path):
    n = Node(mini_api, tmp_path)
    yield n
    n.stop_agent()


def _agent_requests(node: Node) -> int:
    """ADD requests the agent answered (its own log lines: commit, skip, decline, error)."""
    lines = node.agent_err.read_text(errors="replace").splitlines() + node.agent_out.read_text(
        errors="replace").splitlines()
    return sum(1 for x in lines if '"via":"agent"' in x or "plugin falls back" in x or '"code":' in x)


def test_front_alone_answers_an_ordinary_add(node, netns, plugin_bundle, tmp_path):
    node.api.put_pod(injected_pod("f-1"))
    node.api.put_pod(uninjected_pod("f-2"))
    node.start_agent()
    alone = _front(plugin_bundle, tmp_path / "front-alone", python=str(tmp_path / "no-python"))
    for pod in ("f-1", "f-2"):
        ns_plugin, ns_front = netns("plug", addresses=ADDR), netns("front", addresses=ADDR)
        node.plugin = PLUGIN
        by_plugin = node.add(ns_plugin, pod)
        node.plugin = alone
        by_front = node.add(ns_front, pod)
        assert by_plugin.returncode == by_front.returncode == 0, by_front.stdout
        assert by_front.stdout == by_plugin.stdout  # the same bytes: json_dumps' format
        assert by_front.stderr == b""
        assert rules_in(ns_front) == rules_in(ns_plugin)
    assert node.pod_gets("f-1") == 0  # both answered from the agent's cache


def test_front_commits_the_redirect_through_the_agent(node, netns, plugin_bundle, tmp_path):
    node.api.put_pod(injected_pod("r-1"))
    node.start_agent()
    node.plugin = _front(plugin_bundle, tmp_path / "front-alone", python=str(tmp_path / "no-python"))
    ns = netns("redir", addresses=ADDR)
    r = node.add(ns, "r-1")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout) == netconf(node.run_dir)["prevResult"]
    assert "ISTIO_OUTPUT" in rules_in(ns)


@pytest.mark.parametrize(
    "case",
    [
        "excluded-namespace",  # the plugin passes it through without the agent
        "version-conversion",  # prevResult 0.4.0 handed on as 1.0.0: the plugin converts
        "agent-error",  # a bad annotation: the agent's CNI error, raised by the plugin
        "agent-declines",  # unknown pod: fallback, then the direct path fails closed
    ],
)
def test_front_hands_over_and_the_plugin_answers_as_without_it(node, netns, plugin_bundle, case):
    conf, pod, namespace = {}, "h-1", "default"
    if case == "excluded-namespace":
        conf = {"exclude_namespaces": ["kube-system"]}
        namespace = "kube-system"
    elif case == "version-conversion":
        conf = {"prevResult": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "169.254.7.2/24"}]}}
    if case == "agent-error":
        node.api.put_pod(injected_pod(pod, annotations={"traffic.sidecar.istio.io/excludeOutboundPorts": "99999"}))
    elif case != "agent-declines":
        node.api.put_pod(injected_pod(pod, namespace=namespace) if namespace != "default" else injected_pod(pod))
    node.start_agent()
    results = []
    for plugin in (PLUGIN, plugin_bundle.launcher):
        node.plugin = plugin
        ns = netns("ho", addresses=ADDR)
        before = _agent_requests(node)
        r = node.run(plugin_env(ns, pod, namespace), conf)
        asked = _agent_requests(node) - before
        warnings = [json.loads(x)["msg"] for x in r.stderr.decode().splitlines() if '"level":"warn"' in x]
        results.append((r.returncode, json.loads(r.stdout), asked, warnings, rules_in(ns)))
    # Same exit, document, warnings, rules, and as many agent log lines of requests: the
    # front's hand-over never asks the agent a second time.
    assert results[0] == results[1]
