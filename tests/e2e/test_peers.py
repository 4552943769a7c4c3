"""The real peers the suite's upper tier talks to, exercised end to end.

- cnitool (built from the Go module proxy) runs ADD/CHECK/DEL of loopback, bridge + host-local,
  portmap and istio-cni, from inside a "host" netns the test creates (so bridge and portmap never
  touch the machine's own netns), against a pod netns the test creates.
- A real kube-apiserver + etcd: pods created with nodeName, annotations, init containers and a
  native sidecar; read back with the `kubernetes` client; patched, watched, deleted; an
  RBAC-limited identity that may only get pods.
- helm and upstream istio-iptables / istio-cni answer.
- The fast-tier fake API really produces the faults tests script.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest
from peers.fakeapi import Delay, Reset, SlowBody, Status
from peers.tools import tool_version
from support.pods import sidecar_pod

from istio_cni.tools import netns as nsutil
from istio_cni.tools.chain import bridge_conflist

pytestmark = pytest.mark.peers

# --------------------------------------------------------------------------------------------------
# cnitool: the whole chain through the reference runtime-side library (libcni)
# --------------------------------------------------------------------------------------------------

NET = "icni-peers"


def _cnitool(cnitool_bin, host: str, command: str, pod: str, env: dict) -> subprocess.CompletedProcess:
    # nsenter puts cnitool (and so every plugin it execs) in the test's "host" netns.
    return subprocess.run(["nsenter", f"--net={nsutil.path(host)}", str(cnitool_bin), command, NET,
                           nsutil.path(pod)], env=env, capture_output=True, text=True, timeout=120)


def _host_nat_rules(host: str) -> str:
    # portmap uses whichever iptables flavour `iptables` is; read both so the check is flavour-blind.
    tools = ("iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save")
    return "\n".join(nsutil.exec_in(host, tool, "-t", "nat", check=False).stdout for tool in tools)


def test_cnitool_add_check_del_through_chain(cnitool_bin, portmap_bin, cni_path, netns, tmp_path):
    host, pod = netns("host"), netns("pod")
    confdir, ipam, fixed = tmp_path / "net.d", tmp_path / "ipam", tmp_path / "cni-fixed"
    confdir.mkdir()
    fixed.mkdir()
    # A fixed upstream portmap ahead of Debian's (see tools/go/portmap/go.mod for why).
    (fixed / "portmap").symlink_to(portmap_bin)
    conflist = bridge_conflist("1.0.0", "169.254.61.0/24", "icnipeer0", str(ipam), name=NET, extra=[
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
        {"type": "istio-cni", "log_level": "debug"},
    ])
    # Dual-stack pod, so prevResult handling and portmap's DNAT are exercised for both families.
    ipam_conf = conflist["plugins"][1]["ipam"]
    ipam_conf["ranges"].append([{"subnet": "fd00:61::/64"}])
    ipam_conf["routes"].append({"dst": "::/0"})
    (confdir / f"10-{NET}.conflist").write_text(json.dumps(conflist))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "NETCONFPATH": str(confdir),
           "CNI_PATH": f"{fixed}:{cni_path}", "CNI_IFNAME": "eth0",
           "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]})}

    add = _cnitool(cnitool_bin, host, "add", pod, env)
    assert add.returncode == 0, f"cnitool add failed:\n{add.stdout}\n{add.stderr}"
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.0.0"
    ip4, ip6 = sorted((i["address"] for i in result["ips"]), key=lambda a: ":" in a)
    assert ip4.startswith("169.254.61.") and ip6.startswith("fd00:61::"), result
    # The result's addresses are really on the pod's eth0, and portmap's DNAT is in the host netns.
    pod_addrs = nsutil.ip("-n", pod, "-j", "addr", "show", "eth0").stdout
    assert ip4.split("/")[0] in pod_addrs and ip6.split("/")[0] in pod_addrs
    assert "--dport 18080" in _host_nat_rules(host)

    check = _cnitool(cnitool_bin, host, "check", pod, env)
    assert check.returncode == 0, f"cnitool check failed:\n{check.stdout}\n{check.stderr}"

    delete = _cnitool(cnitool_bin, host, "del", pod, env)
    assert delete.returncode == 0, f"cnitool del failed:\n{delete.stdout}\n{delete.stderr}"
    assert nsutil.ip("-n", pod, "link", "show", "eth0", check=False).returncode != 0, "eth0 left in the pod"
    assert "--dport 18080" not in _host_nat_rules(host)
    leases = [p.name for p in (ipam / NET).iterdir() if p.name[0].isdigit() or p.name.startswith("fd00")] \
        if (ipam / NET).exists() else []
    assert leases == [], f"host-local kept leases after DEL: {leases}"
    again = _cnitool(cnitool_bin, host, "del", pod, env)
    assert again.returncode == 0, f"second DEL must succeed too:\n{again.stderr}"


# --------------------------------------------------------------------------------------------------
# the real control plane
# --------------------------------------------------------------------------------------------------

def _ns(control_plane) -> str:
    name = f"peers-{uuid.uuid4().hex[:8]}"
    control_plane.create_namespace(name)
    return name


def _sidecar_pod(ns: str, name: str) -> dict:
    """A native-sidecar pod (istio-proxy an init container that keeps running) on node-a."""
    return sidecar_pod(name, ns, labels={"app": "web"}, native_sidecar=True, init_containers=("istio-validation",),
                       annotations={"traffic.sidecar.istio.io/excludeOutboundPorts": "9000"},
                       proxy_env={"ISTIO_META_DNS_CAPTURE": "true"},
                       security={"runAsUser": 1337, "runAsGroup": 1337}, node_name="node-a")


def test_control_plane_version_and_loopback_only(control_plane):
    assert control_plane.api.call("GET", "/version")["gitVersion"] == tool_version("kube-apiserver")
    pids = {str(p.pid) for p in control_plane.procs.values()}
    assert len(pids) == 2, control_plane.procs
    listeners = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30, check=True).stdout
    ours = [line.split()[3] for line in listeners.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert ours, listeners
    assert all(addr.startswith("127.0.0.1:") for addr in ours), ours


def test_pod_round_trip_through_real_api(control_plane):
    from kubernetes import client, config

    ns = _ns(control_plane)
    created = control_plane.create_pod(_sidecar_pod(ns, "web-0"))
    assert created["metadata"]["uid"] and created["spec"]["nodeName"] == "node-a"

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(control_plane.kubeconfig)))
    pod = api.read_namespaced_pod("web-0", ns)
    assert pod.metadata.uid == created["metadata"]["uid"]
    assert pod.metadata.annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] == "9000"
    assert [c.name for c in pod.spec.init_containers] == ["istio-validation", "istio-proxy"]
    assert pod.spec.init_containers[1].restart_policy == "Always"
    assert pod.spec.init_containers[1].security_context.run_as_user == 1337

    rv = created["metadata"]["resourceVersion"]
    tproxy = {"metadata": {"annotations": {"sidecar.istio.io/interceptionMode": "TPROXY"}}}
    control_plane.api.patch_pod(ns, "web-0", tproxy)
    control_plane.delete_pod(ns, "web-0")
    events = []
    for kind, obj in control_plane.api.watch_pods(ns, resource_version=rv, timeout_seconds=20):
        events.append((kind, obj["metadata"]["name"],
                       obj["metadata"].get("annotations", {}).get("sidecar.istio.io/interceptionMode")))
        if kind == "DELETED":
            break
    # patch, then (API-server side of a delete) deletionTimestamp set, then gone
    assert events[0] == ("MODIFIED", "web-0", "TPROXY"), events
    assert events[-1] == ("DELETED", "web-0", "TPROXY"), events
    assert {kind for kind, _, _ in events[1:-1]} <= {"MODIFIED"}, events
    with pytest.raises(client.ApiException) as gone:
        api.read_namespaced_pod("web-0", ns)
    assert gone.value.status == 404


def test_limited_identity_may_only_get_pods(control_plane, tmp_path):
    from kubernetes import client, config

    ns = _ns(control_plane)
    control_plane.create_pod(_sidecar_pod(ns, "web-1"))
    control_plane.api.create_daemonset({"metadata": {"name": "istio-cni-node", "namespace": ns}, "spec": {
        "selector": {"matchLabels": {"k8s-app": "istio-cni-node"}},
        "template": {"metadata": {"labels": {"k8s-app": "istio-cni-node"}},
                     "spec": {"containers": [{"name": "install-cni", "image": "example.invalid/install-cni:1"}]}}}})
    _, kubeconfig = control_plane.api.limited_identity(
        ns, "plugin", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], tmp_path / "plugin.kubeconfig")

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    assert core.read_namespaced_pod("web-1", ns).spec.node_name == "node-a"
    for forbidden in (lambda: core.list_namespaced_pod(ns),
                      lambda: apps.read_namespaced_daemon_set("istio-cni-node", ns)):
        with pytest.raises(client.ApiException) as denied:
            forbidden()
        assert denied.value.status == 403
    # the admin identity sees the DaemonSet the installer's uninstall-vs-upgrade check reads
    assert control_plane.api.get_daemonset(ns, "istio-cni-node")["metadata"]["name"] == "istio-cni-node"


# --------------------------------------------------------------------------------------------------
# helm, upstream istio-iptables and istio-cni
# --------------------------------------------------------------------------------------------------

def test_helm_version(helm_bin):
    out = subprocess.run([str(helm_bin), "version", "--short"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-helm-home", "HELM_CACHE_HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(tool_version("helm")), out.stdout


def test_istio_iptables_help_and_dry_run(istio_iptables_bin):
    help_ = subprocess.run([str(istio_iptables_bin), "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "--envoy-port" in help_.stdout
    dry = subprocess.run([str(istio_iptables_bin), "--dry-run", "-p", "15001", "-z", "15006", "-u", "1337",
                          "-m", "REDIRECT", "-i", "*", "-b", "*"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in dry.stdout + dry.stderr


def test_upstream_istio_cni_answers_version(upstream_istio_cni_bin):
    out = subprocess.run([str(upstream_istio_cni_bin)], env={"CNI_COMMAND": "VERSION"}, input="{}",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1.0.0" in json.loads(out.stdout)["supportedVersions"]


# --------------------------------------------------------------------------------------------------
# fast tier: the fake API really produces the faults a test scripts
# --------------------------------------------------------------------------------------------------

def _get(url: str, timeout: float = 5, **kw):
    try:
        with urllib.request.urlopen(url, timeout=timeout, **kw) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.fake_api
def test_fake_api_scripted_sequence_then_served(fake_api):
    fake_api.add_pod({"metadata": {"name": "p", "namespace": "ns1"}, "spec": {"nodeName": "n"}})
    path = fake_api.pod_path("ns1", "p")
    fake_api.script(path, 500, Status(429, retry_after=2), 200)
    got = [_get(fake_api.url + path) for _ in range(4)]
    assert [c for c, _ in got] == [500, 429, 200, 200]
    assert got[0][1]["reason"] == "InternalError" and got[1][1]["code"] == 429
    assert got[2][1]["spec"]["nodeName"] == "n"
    assert _get(fake_api.url + fake_api.pod_path("ns1", "missing"))[0] == 404
    assert fake_api.hits(path) == 4


@pytest.mark.fake_api
@pytest.mark.parametrize("code", [401, 403, 404, 429, 500])
def test_fake_api_status_codes(fake_api, code):
    fake_api.add_pod({"metadata": {"name": "p", "namespace": "d"}})
    fake_api.script(fake_api.pod_path("d", "p"), code)
    status, body = _get(fake_api.url + fake_api.pod_path("d", "p"))
    assert (status, body["kind"], body["code"]) == (code, "Status", code)


@pytest.mark.fake_api
def test_fake_api_timeout_reset_and_slow_body(fake_api):
    fake_api.add_pod({"metadata": {"name": "p", "namespace": "d"}, "spec": {"x": "y" * 300}})
    path = fake_api.pod_path("d", "p")
    fake_api.script(path, Delay(5), Reset(), SlowBody(interval=0.5, chunk=64))
    port = int(fake_api.url.rsplit(":", 1)[1])

    def get(timeout: float) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        return conn.getresponse()

    with pytest.raises(TimeoutError):  # Delay: no answer within the client's deadline
        get(0.3)
    with pytest.raises(ConnectionResetError):  # Reset: RST instead of a response
        get(5)
    # SlowBody: status and headers at once, then ~350 bytes in 64-byte chunks every 0.5 s
    resp = get(0.2)
    assert resp.status == 200
    with pytest.raises(TimeoutError):
        resp.read()
    assert fake_api.hits(path) == 3


@pytest.mark.fake_api
def test_fake_api_token_and_tls(tmp_path):
    from peers.fakeapi import FakeAPI

    with FakeAPI(tls_dir=tmp_path / "pki", token="s3cret") as api:
        api.add_pod({"metadata": {"name": "p", "namespace": "d"}})
        url = api.url + api.pod_path("d", "p")
        trusted = ssl.create_default_context(cafile=str(api.ca_file))
        assert _get(url, context=trusted)[0] == 401
        req = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        assert _get(req, context=trusted)[0] == 200
        with pytest.raises(urllib.error.URLError) as untrusted:
            _get(url, context=ssl.create_default_context())
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)


# --------------------------------------------------------------------------------------------------
# a tool that did not build fails its tests with the step, never a silent skip
# --------------------------------------------------------------------------------------------------

def test_missing_tool_fails_naming_the_build_step(tmp_path, monkeypatch):
    import peers.tools as tools

    monkeypatch.setattr(tools, "CACHE", tmp_path)
    (tmp_path / "helm.status").write_text("failed download v3.22.0\n")
    (tmp_path / "helm.build.log").write_text("# step: download\ngo: helm.sh/helm/v3@v3.22.0: 410 Gone\n")
    with pytest.raises(pytest.fail.Exception) as failed:
        tools.tool_path("helm")
    assert "FAILED at step 'download'" in str(failed.value) and "410 Gone" in str(failed.value)
    with pytest.raises(pytest.fail.Exception, match="never built"):
        tools.tool_path("cnitool")
    with pytest.raises(ValueError, match="unknown tool 'kubectl'"):
        tools.tool_path("kubectl")
