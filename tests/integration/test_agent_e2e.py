"""ADD through the node agent vs the direct path: real plugin execs, real agent process,
real network namespaces; the pod API is the mini API (list + watch + GET)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from support.injected_pods import injected_pod, uninjected_pod
from support.nodeharness import node_each_launcher, plugin_env, rules_in  # noqa: F401 - node_each_launcher: fixture "node"

pytestmark = pytest.mark.root


def ok(r) -> dict:
    assert r.returncode == 0, (r.stdout, r.stderr.decode()[-2000:])
    return json.loads(r.stdout)


def test_agent_path_commits_the_same_rules_as_the_direct_path(node, netns):
    node.api.put_pod(injected_pod("early-1"))  # exists before the agent starts (initial list)
    addresses = ("192.0.2.7/24",)
    direct_ns, agent_ns, late_ns = (netns(tag, addresses=addresses) for tag in ("direct", "viaagent", "late"))
    direct = ok(node.add(direct_ns, "early-1"))  # no socket yet: direct path
    assert node.pod_gets("early-1") == 1
    node.start_agent()
    via_agent = ok(node.add(agent_ns, "early-1"))
    assert node.pod_gets("early-1") == 1  # answered from the agent's cache: no GET
    assert via_agent == direct
    assert "ISTIO_OUTPUT" in rules_in(agent_ns)
    assert rules_in(agent_ns) == rules_in(direct_ns)
    node.api.put_pod(injected_pod("late-1"))  # created after the agent started (watch)
    ok(node.add(late_ns, "late-1"))
    assert rules_in(late_ns) == rules_in(direct_ns)
    assert b"falling back" not in node.add(netns("again", addresses=("192.0.2.7/24",)), "late-1").stderr


def test_annotations_reach_the_rules_through_the_agent(node, netns):
    ann = {"traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379",
           "traffic.sidecar.istio.io/includeInboundPorts": "8080"}
    node.api.put_pod(injected_pod("ann-1", annotations=ann))
    direct_ns, agent_ns = netns("direct", addresses=("192.0.2.7/24",)), netns("viaagent", addresses=("192.0.2.7/24",))
    ok(node.add(direct_ns, "ann-1"))
    node.start_agent()
    ok(node.add(agent_ns, "ann-1"))
    assert "--dport 5432 -j RETURN" in rules_in(agent_ns)
    assert "--dport 8080 -j ISTIO_IN_REDIRECT" in rules_in(agent_ns)
    assert rules_in(agent_ns) == rules_in(direct_ns)


def test_uninjected_pod_gets_no_rules_through_the_agent(node, netns):
    node.api.put_pod(uninjected_pod("plain-1"))
    node.start_agent()
    ns = netns("plain", addresses=("192.0.2.7/24",))
    before = rules_in(ns)
    ok(node.add(ns, "plain-1"))
    assert rules_in(ns) == before
    assert "pod has no istio-proxy container" in node.agent_err.read_text()


def test_bad_annotation_fails_the_same_way_on_both_paths(node, netns):
    node.api.put_pod(injected_pod("bad-1", annotations={"traffic.sidecar.istio.io/excludeOutboundPorts": "99999"}))
    direct = node.add(netns("direct", addresses=("192.0.2.7/24",)), "bad-1")
    node.start_agent()
    agent_ns = netns("viaagent", addresses=("192.0.2.7/24",))
    via_agent = node.add(agent_ns, "bad-1")
    assert direct.returncode == via_agent.returncode == 1
    d, a = json.loads(direct.stdout), json.loads(via_agent.stdout)
    assert a["code"] == d["code"] == 102
    assert a["msg"] == d["msg"] and a.get("details") == d.get("details")
    assert "99999" in a["msg"] + a.get("details", "")
    assert "ISTIO" not in rules_in(agent_ns)


def test_missing_socket_falls_back_to_direct(node, netns):
    node.api.put_pod(injected_pod("nosock-1"))
    ns = netns("nosock", addresses=("192.0.2.7/24",))
    r = node.add(ns, "nosock-1")
    ok(r)
    assert node.pod_gets("nosock-1") == 1
    assert "ISTIO_OUTPUT" in rules_in(ns)


def test_stale_socket_of_a_dead_agent_falls_back(node, netns):
    node.api.put_pod(injected_pod("dead-1"))
    agent = node.start_agent()
    agent.kill()  # SIGKILL: the socket file stays behind, nobody listens
    agent.wait(10)
    assert node.socket.exists()
    ns = netns("dead", addresses=("192.0.2.7/24",))
    r = node.add(ns, "dead-1")
    ok(r)
    assert b"ConnectionRefusedError" in r.stderr
    assert "ISTIO_OUTPUT" in rules_in(ns)


def test_slow_agent_times_out_and_the_direct_path_commits(node, netns):
    node.api.put_pod(injected_pod("slow-1"))
    agent = node.start_agent()
    os.kill(agent.pid, signal.SIGSTOP)  # accepts (kernel backlog) but never answers
    try:
        ns = netns("slow", addresses=("192.0.2.7/24",))
        r = node.add(ns, "slow-1", agent_timeout_seconds=0.5)
        ok(r)
        assert b"no answer within 0.5 s" in r.stderr
        assert node.pod_gets("slow-1") == 1  # the direct path's own GET
        direct_rules = rules_in(ns)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    # The woken agent must not commit late on top of the direct path (deadline passed).
    end = time.monotonic() + 10
    while "deadline passed" not in node.agent_err.read_text() and "cannot decide" not in node.agent_err.read_text():
        assert time.monotonic() < end, node.agent_err.read_text()[-2000:]
        time.sleep(0.1)
    assert rules_in(ns) == direct_rules


def test_agent_killed_mid_request_falls_back(node, netns):
    node.api.put_pod(injected_pod("kill-1", node="node-b"))  # not on the agent's node: cache miss
    agent = node.start_agent()
    node.api.delay_gets = 20  # the agent's GET hangs; the plugin's later GET is served at once
    ns = netns("kill", addresses=("192.0.2.7/24",))
    p = node.run(plugin_env(ns, "kill-1"), {}, wait=False)
    end = time.monotonic() + 20
    while node.pod_gets("kill-1") < 1:  # the agent is now inside the request
        assert time.monotonic() < end and p.poll() is None
        time.sleep(0.02)
    agent.kill()
    p.wait(60)  # output is a few KB: fits the pipe buffers
    err = p.stderr.read()
    assert p.returncode == 0, err.decode()[-2000:]
    assert b"falling back" in err
    assert node.pod_gets("kill-1") == 2
    assert "ISTIO_OUTPUT" in rules_in(ns)


def test_pod_unknown_everywhere_fails_closed_and_plugin_logs_reach_the_agent(node, netns):
    node.start_agent()
    r = node.add(netns("ghost", addresses=("192.0.2.7/24",)), "ghost-1")
    assert r.returncode == 1
    assert json.loads(r.stdout)["code"] == 11  # try again later, from the direct path
    assert b"agent asked for the direct path" in r.stderr
    out = node.agent_out.read_text()
    forwarded = [json.loads(line) for line in out.splitlines() if '"source":"plugin"' in line]
    assert any(x["msg"].startswith("pod default/ghost-1 not retrievable") for x in forwarded), out[-2000:]


def test_socket_is_private_and_removed_on_stop(node):
    node.start_agent()
    assert (node.socket.stat().st_mode & 0o777) == 0o600
    node.stop_agent()
    assert node.agent.returncode == 0
    assert not node.socket.exists()
