"""Pods started by kubelet through containerd's CNI chain get their redirect from the installed
plugin: proven with real connections from inside the containers and from the node."""

from __future__ import annotations

import pytest

from node.pods import has_istio_rules
from node.workloads import APP_PORT, injected_pod, plain_pod

pytestmark = [pytest.mark.node, pytest.mark.root, pytest.mark.timeout(900)]

NS = "node-redirect"


@pytest.fixture(scope="module")
def redirect_pods(release, pods, node_images):
    """A plain target pod and an injected pod (app + istio-proxy + istio-validation)."""
    release.ensure()
    workload, node_image = node_images["workload"][0], node_images["node"][0]
    pods.ensure_namespace(NS)
    made = []
    try:
        for manifest in (plain_pod("target", NS, workload), injected_pod("injected", NS, workload, node_image)):
            pods.create(manifest)
            made.append(manifest["metadata"]["name"])
        target = pods.wait_running(NS, "target")
        injected = pods.wait_running(NS, "injected")
        yield {"target": target["status"]["podIP"], "injected": injected["status"]["podIP"], "pod": injected}
    finally:
        for name in made:
            pods.delete(NS, name)


def test_injected_pod_reaches_running_after_validation(redirect_pods, pods):
    validation = pods.init_status(redirect_pods["pod"], "istio-validation")
    assert validation["state"]["terminated"]["exitCode"] == 0, validation
    assert validation.get("restartCount", 0) == 0, "validation failed first: the ADD did not redirect in time"


def test_app_outbound_lands_on_15001_with_original_destination(redirect_pods, pods):
    got = pods.connect_from(NS, "injected", "app", redirect_pods["target"], APP_PORT)
    assert got.get("listener") == 15001, got
    assert got["original"] == f"{redirect_pods['target']}:{APP_PORT}", got


def test_inbound_to_app_port_lands_on_15006(redirect_pods, pods):
    got = pods.connect_from_node(redirect_pods["injected"], APP_PORT)
    assert got.get("listener") == 15006, got
    assert got["original"] == f"{redirect_pods['injected']}:{APP_PORT}", got


def test_proxy_uid_1337_bypasses_the_redirect(redirect_pods, pods):
    got = pods.connect_from(NS, "injected", "istio-proxy", redirect_pods["target"], APP_PORT)
    assert got.get("listener") == APP_PORT, f"uid 1337 was captured: {got}"


def test_status_port_15021_is_not_captured(redirect_pods, pods):
    got = pods.connect_from_node(redirect_pods["injected"], 15021)
    assert got.get("listener") == 15021, got


def test_pod_without_sidecar_gets_no_rules(redirect_pods, pods):
    assert has_istio_rules(pods.rules(NS, "injected")), "the check itself must see the injected pod's rules"
    rules = pods.rules(NS, "target")
    assert not has_istio_rules(rules), rules
    got = pods.connect_from_node(redirect_pods["target"], APP_PORT)
    assert got.get("listener") == APP_PORT, got


def test_injected_pod_in_excluded_namespace_gets_no_rules(release, pods, made_pods, node_images):
    release.ensure()
    excluded = "istio-system"  # the chart's default excludeNamespaces
    made_pods(plain_pod("excluded-target", excluded, node_images["workload"][0]))
    pod = injected_pod("excluded-injected", excluded, node_images["workload"][0], node_images["node"][0])
    # Nothing redirects here, so the validation would fail: the injector leaves it out too when
    # the namespace is excluded from capture.
    del pod["spec"]["initContainers"]
    made_pods(pod)
    pods.wait_running(excluded, "excluded-injected")
    target_ip = pods.wait_running(excluded, "excluded-target")["status"]["podIP"]
    assert not has_istio_rules(pods.rules(excluded, "excluded-injected"))
    got = pods.connect_from(excluded, "excluded-injected", "app", target_ip, APP_PORT)
    assert got.get("listener") == APP_PORT, got
