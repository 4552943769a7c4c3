"""The plugin's two paths on a real node: through the node agent when the chart runs it, and the
direct path (the plugin's own API lookup and commit) when the agent is off.

The agent runs inside the install-cni container (there is no separate agent container to stop),
so "agent stopped" is the chart's ``agent.enabled=false`` rolled out with ``helm upgrade``.
"""

from __future__ import annotations

import pytest

from node.pods import has_istio_rules
from node.release import log_records, metric
from node.workloads import APP_PORT, injected_pod, plain_pod

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.timeout(900)]

NS = "node-agent"


def committed_by_agent(release, ds_pod: dict, pod_name: str) -> list[dict]:
    return [r for r in log_records(release.pod_log(ds_pod))
            if r.get("msg") == "redirect rules committed" and r.get("via") == "agent"
            and pod_name in str(r.get("pod"))]


def test_add_goes_through_the_node_agent(release, pods, made_pods, node_images):
    release.ensure()
    ds_pod = release.ready_pod()
    ds_ip = ds_pod["status"]["podIP"]
    before = metric(pods.http_get_from_node(ds_ip, 15014, "/metrics"), "istio_cni_agent_requests_total", result="ok")
    made_pods(injected_pod("via-agent", NS, node_images["workload"][0], node_images["node"][0]))
    pod = pods.wait_running(NS, "via-agent")
    assert pods.init_status(pod, "istio-validation")["state"]["terminated"]["exitCode"] == 0
    after = metric(pods.http_get_from_node(ds_ip, 15014, "/metrics"), "istio_cni_agent_requests_total", result="ok")
    assert after >= before + 1, f"agent answered no ADD (ok requests {before} -> {after})"
    records = pods.wait(lambda: committed_by_agent(release, ds_pod, "via-agent"),
                        "the agent's 'redirect rules committed' log line for via-agent", 20)
    assert records[0]["netns"].startswith(str(pods.node.netns_dir)), records[0]


def test_add_takes_the_direct_path_with_the_agent_disabled(release, pods, made_pods, node_images):
    release.ensure(agent={"enabled": False})
    ds_pod = release.ready_pod()
    volumes = {v["name"] for v in ds_pod["spec"]["volumes"]}
    assert "cni-netns-dir" not in volumes, "the node pod still runs with the agent (its netns mount)"
    workload = node_images["workload"][0]
    made_pods(plain_pod("direct-target", NS, workload))
    made_pods(injected_pod("direct", NS, workload, node_images["node"][0]))
    pod = pods.wait_running(NS, "direct")
    assert pods.init_status(pod, "istio-validation")["state"]["terminated"]["exitCode"] == 0
    assert has_istio_rules(pods.rules(NS, "direct"))
    target = pods.wait_running(NS, "direct-target")["status"]["podIP"]
    got = pods.connect_from(NS, "direct", "app", target, APP_PORT)
    assert got.get("listener") == 15001 and got["original"] == f"{target}:{APP_PORT}", got
    assert not committed_by_agent(release, ds_pod, "direct"), "no agent runs, yet it logged the commit"
