"""ADD latency on the node's /metrics: real plugin execs (direct path and through the agent),
a real agent process serving /metrics, scraped over HTTP."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from support.injected_pods import injected_pod
from support.nodeharness import Node, node_each_launcher  # noqa: F401 - node_each_launcher: fixture "node"
from support.promtext import sample

from istio_cni import addtiming

pytestmark = pytest.mark.root

SCRAPE_WAIT_SECONDS = 20.0  # the spool is drained every 5 s; a bound, not a timing claim


def monitoring_port(node: Node) -> int:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for path in (node.agent_out, node.agent_err):
            for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
                if '"service":"monitoring"' in line and '"msg":"serving"' in line:
                    return int(json.loads(line)["port"])
        time.sleep(0.05)
    raise AssertionError("agent did not log its monitoring port")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def wait_for(port: int, name: str, value: float, **labels: str) -> str:
    end = time.monotonic() + SCRAPE_WAIT_SECONDS
    while True:
        text = scrape(port)
        if sample(text, name, **labels) == value or time.monotonic() > end:
            return text
        time.sleep(0.2)


def test_direct_and_agent_adds_show_up_in_the_scraped_metrics(node, netns):
    node.api.put_pod(injected_pod("m-1"))
    # 1. Direct path, agent not running: the report waits in the spool file of the run dir.
    r = node.add(netns("mdirect", addresses=("192.0.2.7/24",)), "m-1")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    spooled = [json.loads(x) for x in (node.run_dir / addtiming.SPOOL_NAME).read_text().splitlines()]
    assert [(d["path"], d["result"], d["fallback"]) for d in spooled] == [("direct", "ok", "absent")]
    assert 0 < spooled[0]["seconds"] < 60

    node.start_agent("--monitoring-port", "0")
    port = monitoring_port(node)
    # 2. Through the agent: observed by the agent when it answers.
    r = node.add(netns("magent", addresses=("192.0.2.7/24",)), "m-1")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"falling back" not in r.stderr
    # 3. A pod nobody knows: the agent declines, the direct path fails (code 11); the report
    #    rides on the plugin's log relay.
    r = node.add(netns("mghost", addresses=("192.0.2.7/24",)), "ghost-m")
    assert r.returncode == 1

    text = wait_for(port, "istio_cni_add_duration_seconds_count", 1, path="direct", result="ok")
    assert sample(text, "istio_cni_add_duration_seconds_count", path="direct", result="ok") == 1, text
    assert sample(text, "istio_cni_add_duration_seconds_count", path="agent", result="ok") == 1, text
    assert sample(text, "istio_cni_add_duration_seconds_count", path="direct", result="error") == 1, text
    assert sample(text, "istio_cni_agent_fallbacks_total", reason="absent") == 1, text
    assert sample(text, "istio_cni_agent_fallbacks_total", reason="declined") == 1, text
    agent_sum = sample(text, "istio_cni_add_duration_seconds_sum", path="agent", result="ok")
    assert agent_sum is not None and agent_sum > 0, text
    inf = sample(text, "istio_cni_add_duration_seconds_bucket", path="agent", result="ok", le="+Inf")
    assert inf == 1, text
    assert "# TYPE istio_cni_add_duration_seconds histogram" in text
    assert not (node.run_dir / addtiming.SPOOL_NAME).exists()  # drained
    out = node.agent_out.read_text()
    assert '"report"' not in out  # a timing is a metric, never printed as a plugin log line
