"""The plugin end to end on the real peers: kube-apiserver + etcd, cnitool (libcni), the
reference plugins, real traffic.

cnitool runs in a "node" netns the test creates (bridge builds its bridge there, never in
the machine's own netns). istio-cni is reached through a two-line wrapper that returns to
the test's own netns before exec'ing the plugin, because the API server listens on this
netns's 127.0.0.1 (as on a real node, where the plugin runs in the host netns and only
enters the pod netns to commit). The plugin authenticates with a service-account token
that may only get pods.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.pods import plain_pod, sidecar_pod

from istio_cni.tools import netns as nsutil
from istio_cni.tools.chain import bridge_conflist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from traffic import Listeners, connect  # noqa: E402

pytestmark = pytest.mark.peers
NET = "icni-e2e"


@pytest.fixture(scope="module")
def cluster(control_plane, tmp_path_factory):
    """A namespace for the test pods and a kubeconfig allowed only to get pods."""
    d = tmp_path_factory.mktemp("e2e")
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(ns)
    control_plane.create_namespace("istio-system")
    _, kubeconfig = control_plane.api.limited_identity(
        "istio-system", "istio-cni", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], d / "kubeconfig")
    return control_plane, ns, kubeconfig


@pytest.fixture
def attach(cluster, cnitool_bin, plugin_bin, netns, tmp_path):
    """``attach(pod_manifest, **plugin_conf)`` -> Attachment after a cnitool ADD."""
    cp, ns, kubeconfig = cluster
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "istio-cni"
    wrapper.write_text(f"#!/bin/sh\nexec nsenter --net=/proc/{os.getpid()}/ns/net {plugin_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    made = []

    class Attachment:
        def __init__(self, manifest, conf):
            self.cp, self.manifest = cp, manifest
            self.name = manifest["metadata"]["name"]
            self.namespace = manifest["metadata"]["namespace"]
            self.node, self.pod = netns("node"), netns("pod")
            confdir = tmp_path / f"net.d-{self.name}"
            confdir.mkdir()
            istio = {"type": "istio-cni", "plugin_log_level": "debug",
                     "exclude_namespaces": ["kube-system", "istio-system"],
                     "pod_namespace": "istio-system", "kubernetes": {"kubeconfig": str(kubeconfig)},
                     "lookup_deadline_seconds": 5, **conf}
            self.conflist = bridge_conflist("1.0.0", "192.0.2.0/24", f"icnie{len(made)}", str(tmp_path / "ipam"),
                                            name=NET, extra=[istio])
            (confdir / "10-e2e.conflist").write_text(json.dumps(self.conflist))
            self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "NETCONFPATH": str(confdir),
                        "CNI_PATH": f"/usr/lib/cni:{bindir}", "CNI_IFNAME": "eth0",
                        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                                    f"K8S_POD_INFRA_CONTAINER_ID={self.name}-sandbox"}

        def cnitool(self, command):
            return subprocess.run(["nsenter", f"--net={nsutil.path(self.node)}", str(cnitool_bin), command, NET,
                                   nsutil.path(self.pod)], env=self.env, capture_output=True, text=True, timeout=120)

        def rules(self):
            v4 = nsutil.exec_in(self.pod, "iptables-legacy-save").stdout
            nft = nsutil.exec_in(self.pod, "nft", "list", "ruleset").stdout
            return [x for x in v4.splitlines() if "ISTIO" in x] + [x for x in nft.splitlines() if "istio" in x]

    def make(manifest, **conf):
        if manifest["metadata"]["namespace"] != "istio-system":
            if manifest["metadata"]["namespace"] == "default":
                manifest["metadata"]["namespace"] = ns
        manifest["spec"]["nodeName"] = "node-a"
        cp.create_pod(manifest)
        a = Attachment(manifest, conf)
        made.append(a)
        out = a.cnitool("add")
        assert out.returncode == 0, f"cnitool add failed:\n{out.stdout}\n{out.stderr}"
        a.result = json.loads(out.stdout)
        a.ip = a.result["ips"][0]["address"].split("/")[0]
        return a

    yield make
    for a in made:
        a.cnitool("del")
        try:
            cp.delete_pod(a.namespace, a.name)
        except Exception:
            pass


def _gateway(a):
    return a.result["ips"][0]["gateway"]


def test_sidecar_pod_redirected_checked_and_deleted(attach):
    a = attach(sidecar_pod(f"web-{uuid.uuid4().hex[:5]}"))
    assert a.rules(), "no ISTIO rules committed"
    with Listeners(a.pod, ["15001", "15006"], lifetime=30), Listeners(a.node, ["80"], lifetime=30):
        out = connect(a.pod, _gateway(a), 80)
        assert out["port"] == 15001 and out["orig"] == [_gateway(a), 80]
        bypass = connect(a.pod, _gateway(a), 80, uid=1337)
        assert bypass["port"] == 80, bypass
        inbound = connect(a.node, a.ip, 8080)
        assert inbound["port"] == 15006 and inbound["orig"] == [a.ip, 8080]
    assert a.cnitool("check").returncode == 0
    nsutil.exec_in(a.pod, "iptables-legacy", "-t", "nat", "-F", "ISTIO_OUTPUT", check=True)
    bad = a.cnitool("check")
    assert bad.returncode != 0 and "ISTIO_OUTPUT" in bad.stdout + bad.stderr
    assert a.cnitool("del").returncode == 0
    assert a.rules() == []


@pytest.mark.parametrize(
    "make_pod",
    [lambda n: plain_pod(n), lambda n: sidecar_pod(n, labels={"sidecar.istio.io/inject": "false"}),
     lambda n: sidecar_pod(n, namespace="istio-system")],
    ids=["no-sidecar", "inject-false", "excluded-namespace"],
)
def test_skipped_pods_have_no_rules_and_plain_traffic(attach, make_pod):
    a = attach(make_pod(f"skip-{uuid.uuid4().hex[:5]}"))
    assert a.rules() == []
    with Listeners(a.node, ["80"], lifetime=20):
        assert connect(a.pod, _gateway(a), 80)["port"] == 80
    assert a.cnitool("check").returncode == 0


def test_native_sidecar_redirected(attach):
    a = attach(sidecar_pod(f"native-{uuid.uuid4().hex[:5]}", native_sidecar=True))
    with Listeners(a.pod, ["15001"], lifetime=20):
        assert connect(a.pod, _gateway(a), 80)["port"] == 15001


def test_tproxy_inbound_transparent(attach):
    tproxy = {"sidecar.istio.io/interceptionMode": "TPROXY"}
    a = attach(sidecar_pod(f"tproxy-{uuid.uuid4().hex[:5]}", annotations=tproxy))
    with Listeners(a.pod, ["15001", "15006t"], lifetime=30):
        inbound = connect(a.node, a.ip, 8080)
        assert inbound["port"] == 15006 and inbound["local"] == [a.ip, 8080], inbound
        assert connect(a.pod, _gateway(a), 80)["port"] == 15001
    assert a.cnitool("check").returncode == 0


def test_annotated_include_exclude(attach):
    a = attach(sidecar_pod(f"annot-{uuid.uuid4().hex[:5]}", annotations={
        "traffic.sidecar.istio.io/includeInboundPorts": "8080",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "9000",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "192.0.2.1/32"}))
    with Listeners(a.pod, ["15001", "15006", "9090"], lifetime=30), Listeners(a.node, ["80", "9000"], lifetime=30):
        assert connect(a.pod, _gateway(a), 80)["port"] == 80          # excluded CIDR bypasses
        assert connect(a.node, a.ip, 8080)["port"] == 15006           # included inbound port
        assert connect(a.node, a.ip, 9090)["port"] == 9090            # not included: straight to the app
    assert a.cnitool("check").returncode == 0


def test_bad_annotation_fails_add(cluster, cnitool_bin, attach):
    with pytest.raises(AssertionError) as ei:
        attach(sidecar_pod(f"bad-{uuid.uuid4().hex[:5]}",
                           annotations={"traffic.sidecar.istio.io/excludeInboundPorts": "http"}))
    assert "excludeInboundPorts" in str(ei.value)
