"""The agent path on the real control plane: pods created before and after the agent starts,
ADD through the agent vs the direct path, rules compared in real network namespaces."""

from __future__ import annotations

import json

import pytest
from support.cpsupport import manifest, unique
from support.injected_pods import injected_pod, uninjected_pod
from support.nodeharness import Node, rules_in

pytestmark = [pytest.mark.root, pytest.mark.peers]


@pytest.fixture
def cp_node(control_plane, tmp_path):
    from peers.kubeapi import write_kubeconfig

    ns = unique("agent")
    control_plane.create_namespace(ns)
    control_plane.api.ensure_service_account(ns, "default")
    node = Node(None, tmp_path, node=unique("node"), agent_kubeconfig=str(control_plane.kubeconfig))
    write_kubeconfig(node.run_dir / "istio-cni-kubeconfig", control_plane.server, control_plane.ca_file,
                     control_plane.token, "istio-cni")
    yield node, ns
    node.stop_agent()


def ok(r) -> dict:
    assert r.returncode == 0, (r.stdout, r.stderr.decode()[-2000:])
    return json.loads(r.stdout)


def via_agent(node: Node, pod: str) -> bool:
    return any(f'"pod":"{pod}"' in line and '"via":"agent"' in line
               for line in node.agent_err.read_text().splitlines())


def test_pods_before_and_after_agent_start_get_the_direct_paths_rules(control_plane, cp_node, netns):
    node, ns = cp_node
    ann = {"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}
    control_plane.create_pod(manifest(injected_pod("before-1", annotations=ann), ns, node.node))
    direct_ns = netns("cpdirect", addresses=("192.0.2.7/24",))
    direct = ok(node.add(direct_ns, "before-1", namespace=ns))  # no agent yet: direct path
    node.start_agent()
    agent_ns = netns("cpagent", addresses=("192.0.2.7/24",))
    r = node.add(agent_ns, "before-1", namespace=ns)
    assert ok(r) == direct
    assert b"falling back" not in r.stderr and via_agent(node, f"{ns}/before-1")
    assert "--dport 5432 -j RETURN" in rules_in(agent_ns)
    assert rules_in(agent_ns) == rules_in(direct_ns)

    control_plane.create_pod(manifest(injected_pod("after-1", annotations=ann), ns, node.node))
    control_plane.create_pod(manifest(uninjected_pod("plain-1"), ns, node.node))
    late_ns, plain_ns = netns("cplate", addresses=("192.0.2.7/24",)), netns("cpplain", addresses=("192.0.2.7/24",))
    r = node.add(late_ns, "after-1", namespace=ns)
    ok(r)
    assert b"falling back" not in r.stderr and via_agent(node, f"{ns}/after-1")
    assert rules_in(late_ns) == rules_in(direct_ns)  # same annotations, same rules
    before = rules_in(plain_ns)
    ok(node.add(plain_ns, "plain-1", namespace=ns))
    assert rules_in(plain_ns) == before


def test_pod_on_another_node_is_fetched_by_the_agent(control_plane, cp_node, netns):
    # Not in the agent's node-scoped watch: cache miss -> the agent GETs it itself.
    node, ns = cp_node
    control_plane.create_pod(manifest(injected_pod("elsewhere-1"), ns, unique("other-node")))
    node.start_agent()
    target = netns("cpmiss", addresses=("192.0.2.7/24",))
    r = node.add(target, "elsewhere-1", namespace=ns)
    ok(r)
    assert b"falling back" not in r.stderr and via_agent(node, f"{ns}/elsewhere-1")
    assert "ISTIO_OUTPUT" in rules_in(target)
