"""The whole plugin process (exec'd like kubelet does) against the fake API and real netns.

Fast tier: the API is the in-process fake (faults on demand); the netns, the chain and the
netfilter commits are real. The real control plane runs the same flows in tests/e2e.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from peers.fakeapi import Delay, Reset
from support.pods import plain_pod, sidecar_pod

from istio_cni.tools import netns as nsutil
from istio_cni.tools.chain import PluginFailed, exec_plugin

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
        "ips": [{"interface": 0, "address": "169.254.77.2/24", "gateway": "169.254.77.1"}],
        "routes": [{"dst": "0.0.0.0/0"}]}


def kubeconfig(tmp_path, server):
    p = tmp_path / "istio-cni-kubeconfig"
    p.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": {}}]}))
    return p


@pytest.fixture
def env(fake_api, tmp_path, netns, cni_path):
    """Everything one plugin exec needs: conf, a pod netns, the fake API."""

    class Env:
        api = fake_api
        pod_ns = netns("pod", addresses=("192.0.2.77/24",))  # a usable address, as a primary CNI gives
        conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
                "plugin_log_level": "debug", "exclude_namespaces": ["istio-system"],
                "pod_namespace": "istio-system", "kubernetes": {"kubeconfig": str(kubeconfig(tmp_path, fake_api.url))},
                "lookup_deadline_seconds": 0.4, "lookup_retry_interval_seconds": 0.1, "prevResult": PREV}

        def run(self, command, pod_ns="default", pod_name="web", conf=None, netns_path=None, cid="cid1"):
            return exec_plugin("istio-cni", command, conf or self.conf, container_id=cid,
                               netns=netns_path or nsutil.path(self.pod_ns), ifname="eth0", cni_path=cni_path,
                               cni_args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_ns};K8S_POD_NAME={pod_name};"
                                        "K8S_POD_INFRA_CONTAINER_ID=cid1;K8S_POD_UID=uid-1")

        def save(self):
            v4 = nsutil.exec_in(self.pod_ns, "iptables-legacy-save").stdout
            v4 = "".join(line for line in v4.splitlines(True) if not line.startswith("#"))
            nft = nsutil.exec_in(self.pod_ns, "nft", "list", "ruleset").stdout
            return v4, nft

        def has_rules(self):
            v4, nft = self.save()
            return "ISTIO_" in v4 or "istio" in nft

    return Env()


def test_redirected_pod_gets_rules_and_result_unchanged(env):
    env.api.add_pod(sidecar_pod("web"))
    out = env.run("ADD")
    assert out == PREV
    v4, _ = env.save()
    assert "-A OUTPUT -j ISTIO_OUTPUT" in v4 or "-A OUTPUT -p tcp -j ISTIO_OUTPUT" in v4
    assert "--to-ports 15001" in v4 and "--to-ports 15006" in v4


def test_second_add_is_idempotent(env):
    env.api.add_pod(sidecar_pod("web"))
    env.run("ADD")
    first = env.save()
    env.run("ADD")
    assert env.save() == first


@pytest.mark.parametrize(
    "pod,ns",
    [(plain_pod("web"), "default"),
     (sidecar_pod("web", labels={"sidecar.istio.io/inject": "false"}), "default"),
     (sidecar_pod("web", init_containers=("istio-init",)), "default"),
     (sidecar_pod("web", injected=False), "default")],
    ids=["no-sidecar", "inject-false", "istio-init", "not-injected"],
)
def test_skipped_pods_get_no_rules(env, pod, ns):
    env.api.add_pod(pod)
    assert env.run("ADD", ns) == PREV
    assert not env.has_rules()


def test_native_sidecar_redirected(env):
    env.api.add_pod(sidecar_pod("web", native_sidecar=True))
    env.run("ADD")
    assert env.has_rules()


@pytest.mark.parametrize("ns,name", [("istio-system", "anything"), ("istio-system", "istio-cni-node-abcde")])
def test_excluded_and_self_pod_never_contact_api(env, ns, name):
    assert env.run("ADD", ns, name) == PREV
    assert env.api.requests == []
    assert not env.has_rules()


def test_not_a_kubernetes_pod(env, cni_path):
    out = exec_plugin("istio-cni", "ADD", env.conf, container_id="c", netns=nsutil.path(env.pod_ns),
                      ifname="eth0", cni_path=cni_path, cni_args="")
    assert out == PREV and env.api.requests == []


def test_api_500_then_200(env):
    env.api.add_pod(sidecar_pod("web"))
    env.api.script(env.api.pod_path("default", "web"), 500)
    env.run("ADD")
    assert env.has_rules()


@pytest.mark.parametrize("fault,code", [(403, 101), (404, 11), (Reset(), 11), (Delay(10), 11)],
                         ids=["403", "404-until-deadline", "reset", "slow"])
def test_api_faults_fail_closed_without_partial_rules(env, fault, code):
    env.api.add_pod(sidecar_pod("web"))
    path = env.api.pod_path("default", "web")
    env.api.script(path, *([fault] * 10))
    conf = dict(env.conf)
    if isinstance(fault, Delay):
        conf["lookup_deadline_seconds"] = 0  # one attempt; the client times out (5 s)
    with pytest.raises(PluginFailed) as ei:
        env.run("ADD", conf=conf)
    assert ei.value.error["code"] == code, ei.value
    assert not env.has_rules()


def test_bad_annotation_fails_closed(env):
    env.api.add_pod(sidecar_pod("web", annotations={"traffic.sidecar.istio.io/includeInboundPorts": "80,notaport"}))
    with pytest.raises(PluginFailed) as ei:
        env.run("ADD")
    err = ei.value.error
    assert err["code"] == 102 and "includeInboundPorts" in (err["msg"] + err.get("details", ""))
    assert "notaport" in (err["msg"] + err.get("details", ""))
    assert not env.has_rules()


def test_check_passes_then_detects_tampering(env):
    env.api.add_pod(sidecar_pod("web"))
    env.run("ADD")
    assert env.run("CHECK") is None
    nsutil.exec_in(env.pod_ns, "iptables-legacy", "-t", "nat", "-F", "ISTIO_OUTPUT", check=True)
    with pytest.raises(PluginFailed) as ei:
        env.run("CHECK")
    assert ei.value.error["code"] == 103 and "ISTIO_OUTPUT" in ei.value.error["details"]


def test_check_skipped_pod_succeeds(env):
    env.api.add_pod(plain_pod("web"))
    assert env.run("CHECK") is None


def test_del_removes_rules_idempotent_and_without_api(env):
    env.api.add_pod(sidecar_pod("web"))
    env.run("ADD")
    hits = len(env.api.requests)
    assert env.run("DEL") is None
    assert not env.has_rules()
    assert env.run("DEL") is None
    assert len(env.api.requests) == hits


def test_del_after_netns_gone(env, tmp_path):
    assert env.run("DEL", netns_path=str(tmp_path / "gone")) is None


def test_status_and_gc(env, tmp_path, cni_path):
    conf = {**env.conf, "cniVersion": "1.1.0"}
    conf.pop("prevResult")
    assert exec_plugin("istio-cni", "STATUS", conf, container_id="", netns="", ifname="", cni_path=cni_path) is None
    missing = {**conf, "kubernetes": {"kubeconfig": str(tmp_path / "nope")}}
    with pytest.raises(PluginFailed) as ei:
        exec_plugin("istio-cni", "STATUS", missing, container_id="", netns="", ifname="", cni_path=cni_path)
    assert ei.value.error["code"] == 50 and "kubeconfig" in ei.value.error["msg"]
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "x", "ifname": "eth0"}]}
    assert exec_plugin("istio-cni", "GC", gc, container_id="", netns="", ifname="", cni_path=cni_path) is None


def test_ambient_refused(env):
    with pytest.raises(PluginFailed) as ei:
        env.run("ADD", conf={**env.conf, "ambient_enabled": True})
    assert ei.value.error["code"] == 7


def test_stdout_only_protocol(env, cni_path):
    """Logs (debug level) go to stderr; stdout holds exactly the result document."""
    env.api.add_pod(sidecar_pod("web"))
    plugin = f"{cni_path.split(':')[1]}/istio-cni"
    p = subprocess.run([plugin], input=json.dumps(env.conf).encode(), capture_output=True,
                       env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": nsutil.path(env.pod_ns),
                            "CNI_IFNAME": "eth0", "CNI_PATH": cni_path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}, timeout=60)
    assert p.returncode == 0
    assert json.loads(p.stdout) == PREV
    lines = [json.loads(x) for x in p.stderr.decode().splitlines() if x.strip()]
    assert any(x["msg"] == "redirect rules committed" for x in lines)
