"""The agent and repair controller as installer services (settings -> services -> metrics)."""

from __future__ import annotations

import time

import pytest
from support.injected_pods import injected_pod, validation_failed

from istio_cni_installer.agent.services import node_services
from istio_cni_installer.health import Metrics
from istio_cni_installer.settings import SettingError, parse


def settings(tmp_path, **env):
    base = {"MOUNTED_CNI_AGENT_RUN_DIR": str(tmp_path / "run"), "KUBERNETES_NODE_NAME": "node-a",
            "SERVICE_ACCOUNT_DIR": str(tmp_path / "no-sa")}
    base.update(env)
    return parse([], base)


def test_agent_and_repair_run_as_services_and_count_into_metrics(tmp_path, mini_api):
    from istio_cni import agent_client
    from istio_cni.config import parse_conf
    from istio_cni.skel import CmdArgs

    mini_api.put_pod(injected_pod("svc-1"))
    mini_api.put_pod(validation_failed(injected_pod("svc-broken")))
    s = settings(tmp_path, AGENT_KUBECONFIG=mini_api.kubeconfig(tmp_path / "kc"), REPAIR_MODE="label")
    metrics = Metrics()
    svcs = node_services(s, metrics)
    assert [x.name for x in svcs] == ["node-agent", "repair-controller"]
    for x in svcs:
        x.start()
    try:
        agent = svcs[0].agent
        assert agent.wait_ready(30)
        conf = parse_conf({"cniVersion": "1.0.0", "name": "n", "cni_agent_run_dir": str(tmp_path / "run")})
        # A request the agent must refuse (DEL) is enough to see it counted: no netns needed.
        args = CmdArgs("DEL", "c", "", "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=svc-1", "/opt/cni/bin",
                       {}, b'{"cniVersion":"1.0.0","name":"n"}')
        with pytest.raises(Exception, match="serves ADD only"):
            agent_client.try_agent(conf, args)
        assert metrics.get("istio_cni_agent_requests_total", result="error") == 1
        assert 'istio_cni_agent_requests_total{result="error"} 1' in metrics.render()
        end = time.monotonic() + 20
        while metrics.get("istio_cni_repair_pods_repaired_total", type="label", result="success") != 1:
            assert time.monotonic() < end, metrics.render()
            time.sleep(0.05)
        assert 'istio_cni_repair_pods_repaired_total{result="success",type="label"} 1' in metrics.render()
        assert mini_api.get("default", "svc-broken")["metadata"]["labels"]["cni.istio.io/uninitialized"] == "true"
    finally:
        for x in reversed(svcs):
            x.stop(None)
    assert not (tmp_path / "run" / "agent.sock").exists()


def test_disabled_by_settings(tmp_path):
    assert node_services(settings(tmp_path, AGENT_ENABLED="false", REPAIR_ENABLED="false")) == []


def test_missing_credentials_disable_rather_than_crash(tmp_path):
    assert node_services(settings(tmp_path)) == []


def test_bad_repair_mode_is_named(tmp_path):
    with pytest.raises(SettingError, match="REPAIR_MODE"):
        settings(tmp_path, REPAIR_MODE="fix")


def test_repair_settings_from_the_environment_drive_the_running_controller(tmp_path, mini_api):
    """REPAIR_BROKEN_POD_LABEL_* and REPAIR_CREATE_EVENTS go through node_services to the action."""
    mini_api.put_pod(validation_failed(injected_pod("env-broken")))
    s = settings(tmp_path, AGENT_KUBECONFIG=mini_api.kubeconfig(tmp_path / "kc"), AGENT_ENABLED="false",
                 REPAIR_LABEL_PODS="true", REPAIR_REPAIR_PODS="false", REPAIR_DELETE_PODS="false",
                 REPAIR_BROKEN_POD_LABEL_KEY="example.com/broken", REPAIR_BROKEN_POD_LABEL_VALUE="yes",
                 REPAIR_CREATE_EVENTS="false")
    svcs = node_services(s)
    assert [x.name for x in svcs] == ["repair-controller"]
    svcs[0].start()
    try:
        end = time.monotonic() + 20
        def labels() -> dict:
            return mini_api.get("default", "env-broken")["metadata"].get("labels") or {}

        while labels().get("example.com/broken") != "yes":
            assert time.monotonic() < end, "custom label not applied"
            time.sleep(0.05)
    finally:
        svcs[0].stop(None)
    assert mini_api.events == []


def test_repair_with_selectors_watches_on_its_own_next_to_the_agent(tmp_path, mini_api):
    kc = mini_api.kubeconfig(tmp_path / "kc")
    shared = node_services(settings(tmp_path, AGENT_KUBECONFIG=kc))
    assert shared[1].own_cache is False and shared[1].cache is shared[0].agent.cache
    own = node_services(settings(tmp_path, AGENT_KUBECONFIG=kc, REPAIR_LABEL_SELECTORS="app=x",
                                 REPAIR_FIELD_SELECTORS="status.phase=Running", REPAIR_NODE_NAME="node-b"))
    repair = own[1]
    assert repair.own_cache is True and repair.cache is not own[0].agent.cache
    assert (repair.cache.node_name, repair.cache.label_selector, repair.cache.field_selector) == (
        "node-b", "app=x", "status.phase=Running")
    assert own[0].agent.cache.label_selector == "" and own[0].agent.cache.node_name == "node-a"


@pytest.mark.parametrize("agent_enabled", ["true", "false"])
def test_repair_controller_sees_the_installers_readiness(tmp_path, mini_api, agent_enabled):
    # Delete mode waits for it (repair/controller.py): the installer's Metrics.ready, set once
    # plugin, kubeconfig and conflist entry are in place on this node.
    s = settings(tmp_path, AGENT_KUBECONFIG=mini_api.kubeconfig(tmp_path / "kc"), REPAIR_MODE="delete",
                 AGENT_ENABLED=agent_enabled)
    metrics = Metrics()
    repair = next(x for x in node_services(s, metrics) if x.name == "repair-controller").controller
    assert repair.plugin_ready() is False
    metrics.set_ready(True)
    assert repair.plugin_ready() is True
    no_metrics = next(x for x in node_services(s) if x.name == "repair-controller").controller
    assert no_metrics.plugin_ready is None
