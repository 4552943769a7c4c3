"""SIGTERM: uninstall vs upgrade, decided from the DaemonSet and the node (fake and real API)."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.installer_fixtures import InstallerProcess, project_token

from istio_cni_installer.nodematch import mismatch
from istio_cni_installer.settings import parse
from istio_cni_installer.standin import is_standin
from istio_cni_installer.upgrade import ApiClient, decide

NS, DS, NODE = "istio-system", "istio-cni-node", "node-a"
DS_PATH = f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}"
NODE_PATH = f"/api/v1/nodes/{NODE}"
POD_PATH = f"/api/v1/namespaces/{NS}/pods/istio-cni-node-x1"

DAEMONSET = {"metadata": {"name": DS, "namespace": NS}, "spec": {
    "selector": {"matchLabels": {"k8s-app": "istio-cni-node"}},
    "template": {"metadata": {"labels": {"k8s-app": "istio-cni-node"}}, "spec": {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"effect": "NoSchedule", "operator": "Exists"}],
        "containers": [{"name": "install-cni", "image": "istio/install-cni:test"}]}}}}
NODE_OBJ = {"metadata": {"name": NODE, "labels": {"kubernetes.io/os": "linux", "pool": "a"}},
            "spec": {"taints": [{"key": "dedicated", "value": "mesh", "effect": "NoSchedule"}]}}


class TinyAPI:
    """Serves ``objects[path] = (status, body)`` on 127.0.0.1; records the auth headers."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[int, dict]] = {}
        self.auth: list[str] = []
        api = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                api.auth.append(self.headers.get("Authorization", ""))
                code, body = api.objects.get(self.path, (404, {"kind": "Status", "code": 404}))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _settings(lay, port, **env):
    base = lay.env(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(port),
                   KUBERNETES_SERVICE_PROTOCOL="http", DISABLE_SAFE_UPGRADE="false",
                   POD_NAMESPACE=NS, POD_NAME="istio-cni-node-x1", KUBERNETES_NODE_NAME=NODE)
    base.update(env)
    return base


@pytest.fixture
def api():
    with TinyAPI() as a:
        a.objects[POD_PATH] = (200, {"metadata": {"ownerReferences": [{"kind": "DaemonSet", "name": DS}]}})
        a.objects[DS_PATH] = (200, copy.deepcopy(DAEMONSET))
        a.objects[NODE_PATH] = (200, copy.deepcopy(NODE_OBJ))
        yield a


def _decide(lay, api, **env):
    s = parse([], _settings(lay, api.port, **env))
    return decide(s, lambda: ApiClient.from_settings(s))


def test_upgrade_when_daemonset_still_targets_node(host_layout, api):
    keep, reason = _decide(host_layout, api)
    assert keep, reason
    assert "still targets node node-a" in reason
    assert api.auth and all(a == "Bearer token-one" for a in api.auth)


@pytest.mark.parametrize("change,expect", [
    (lambda a: a.objects.pop(DS_PATH), "is gone"),
    (lambda a: a.objects.__setitem__(DS_PATH, (403, {})), "revoked"),
    (lambda a: a.objects[DS_PATH][1]["metadata"].__setitem__("deletionTimestamp", "2026-11-26T00:00:00Z"),
     "being deleted"),
    (lambda a: a.objects[DS_PATH][1]["spec"]["template"]["spec"].__setitem__(
        "nodeSelector", {"kubernetes.io/os": "windows"}), "nodeSelector"),
    (lambda a: a.objects[DS_PATH][1]["spec"]["template"]["spec"].__setitem__("tolerations", []),
     "taint dedicated=mesh:NoSchedule not tolerated"),
    (lambda a: a.objects.pop(NODE_PATH), "node node-a is gone"),
])
def test_uninstall_when_daemonset_no_longer_covers_node(host_layout, api, change, expect):
    change(api)
    keep, reason = _decide(host_layout, api)
    assert not keep and expect in reason, reason


def test_unreachable_api_keeps_the_plugin(host_layout, api):
    port = api.port
    api.server.shutdown()
    api.server.server_close()
    s = parse([], _settings(host_layout, port))
    keep, reason = decide(s, lambda: ApiClient.from_settings(s, timeout=1))
    assert keep and "unreachable" in reason


def test_daemonset_name_from_env_and_opt_out(host_layout, api):
    api.objects.pop(POD_PATH)
    keep, _ = _decide(host_layout, api, INSTALLER_DAEMONSET_NAME=DS)
    assert keep
    keep, reason = _decide(host_layout, api, DISABLE_SAFE_UPGRADE="true")
    assert not keep and "DISABLE_SAFE_UPGRADE" in reason


@pytest.mark.parametrize("affinity,ok", [
    ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "b"]}]}, True),
    ({"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, True),
    ({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-b"]}]}, False),
])
def test_node_affinity_terms(affinity, ok):
    ds = copy.deepcopy(DAEMONSET)
    ds["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [affinity]}}}
    assert (mismatch(ds, NODE_OBJ) is None) == ok


def _installed_proc(lay, bundle, api):
    (lay.net_dir / "10-calico.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}))
    p = InstallerProcess(_settings(lay, api.port, PLUGIN_BUNDLE_DIR=str(bundle.bundle_dir)))
    p.wait_ready()
    return p


def test_sigterm_during_upgrade_leaves_everything_in_place(plugin_bundle, host_layout, api):
    p = _installed_proc(host_layout, plugin_bundle, api)
    assert p.terminate() == 0
    conf = json.loads((host_layout.net_dir / "10-calico.conflist").read_text())
    assert conf["plugins"][-1]["type"] == "istio-cni"
    assert (host_layout.bin_dir / "istio-cni").exists()
    assert (host_layout.run_dir / "istio-cni-kubeconfig").exists()
    assert any(r.get("msg") == "leaving plugin and config in place" for r in p.records)


def test_sigterm_after_daemonset_deleted_uninstalls(plugin_bundle, host_layout, api):
    p = _installed_proc(host_layout, plugin_bundle, api)
    api.objects.pop(DS_PATH)
    assert p.terminate() == 0
    conf = json.loads((host_layout.net_dir / "10-calico.conflist").read_text())
    assert [x["type"] for x in conf["plugins"]] == ["calico"]
    assert is_standin((host_layout.bin_dir / "istio-cni").read_text())  # DEL-only stand-in
    assert not (host_layout.run_dir / "istio-cni-kubeconfig").exists()


# The real control plane is shared by the session (chart and e2e tests install istio-cni-node
# in istio-system there), so these tests use names of their own.
R_NS, R_DS, R_NODE = "installer-upgrade-test", "installer-upgrade-ds", "installer-upgrade-node"
R_DS_PATH = f"/apis/apps/v1/namespaces/{R_NS}/daemonsets/{R_DS}"
R_NODE_PATH = f"/api/v1/nodes/{R_NODE}"


def _real_daemonset() -> dict:
    ds = copy.deepcopy(DAEMONSET)
    ds["metadata"] = {"name": R_DS, "namespace": R_NS}
    return ds


def _real_node() -> dict:
    node = copy.deepcopy(NODE_OBJ)
    node["metadata"]["name"] = R_NODE
    return node


def _real_objects(kapi) -> None:
    """Namespace (shared by the session's control plane), our Node and DaemonSet."""
    kapi.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": R_NS}}, ok=(201, 409))
    kapi.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", **_real_node()}, ok=(201, 409))
    kapi.create_daemonset(_real_daemonset())


@pytest.mark.peers
def test_decision_against_a_real_daemonset(control_plane, host_layout):
    """The real kube-apiserver: same decisions from real DaemonSet/Node objects and RBAC."""
    kapi = control_plane.api
    _real_objects(kapi)
    host, port = control_plane.server.rsplit("//", 1)[1].rsplit(":", 1)
    project_token(host_layout.sa_dir, {"token": control_plane.token.encode(),
                                       "ca.crt": control_plane.ca_file.read_bytes()})
    env = host_layout.env(KUBERNETES_SERVICE_HOST=host.strip("[]"), KUBERNETES_SERVICE_PORT=port,
                          DISABLE_SAFE_UPGRADE="false", POD_NAMESPACE=R_NS, INSTALLER_DAEMONSET_NAME=R_DS,
                          KUBERNETES_NODE_NAME=R_NODE)
    s = parse([], env)
    try:
        keep, reason = decide(s, lambda: ApiClient.from_settings(s))
        assert keep, reason
        # the installer's own least-privilege identity, as the chart grants it, decides the same
        rules = [{"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]},
                 {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get"]}]
        token, _ = kapi.limited_identity(R_NS, "installer-upgrade-check", rules, host_layout.root / "kc1")
        project_token(host_layout.sa_dir, {"token": token.encode(), "ca.crt": control_plane.ca_file.read_bytes()})
        keep, reason = decide(s, lambda: ApiClient.from_settings(s))
        assert keep, reason
        # RBAC removed (chart uninstalled first): 403 on the DaemonSet means uninstall
        token, _ = kapi.limited_identity(R_NS, "installer-no-rbac", [{"apiGroups": [""], "resources": ["nodes"],
                                                                    "verbs": ["get"]}], host_layout.root / "kc2")
        project_token(host_layout.sa_dir, {"token": token.encode(), "ca.crt": control_plane.ca_file.read_bytes()})
        keep, reason = decide(s, lambda: ApiClient.from_settings(s))
        assert not keep and "revoked (HTTP 403)" in reason, reason
        project_token(host_layout.sa_dir, {"token": control_plane.token.encode(),
                                           "ca.crt": control_plane.ca_file.read_bytes()})
        kapi.call("PATCH", R_DS_PATH, {"spec": {"template": {"spec": {"nodeSelector": {"pool": "b"}}}}},
                  content_type="application/merge-patch+json")
        keep, reason = decide(s, lambda: ApiClient.from_settings(s))
        assert not keep and "nodeSelector pool=b" in reason
        kapi.call("DELETE", R_DS_PATH, ok=(200, 202))
        keep, reason = decide(s, lambda: ApiClient.from_settings(s))
        assert not keep and ("is gone" in reason or "being deleted" in reason), reason
    finally:
        kapi.call("DELETE", R_DS_PATH, ok=(200, 202, 404))
        kapi.call("DELETE", R_NODE_PATH, ok=(200, 202, 404))


def test_extra_services_start_after_and_stop_before_the_installer_cleans_up(plugin_bundle, host_layout):
    """The node agent / repair controller join through service_factories."""
    from istio_cni_installer.app import App

    events = []

    class Probe:
        name = "probe"

        def start(self):
            events.append(("start", None))

        def stop(self, deadline=None):
            events.append(("stop", (host_layout.bin_dir / "istio-cni").exists()))

    (host_layout.net_dir / "10-calico.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}))
    s = parse([], host_layout.env(plugin_bundle))
    seen_metrics = []
    app = App(s, service_factories=[lambda st, m: seen_metrics.append(m) or [Probe()]])
    app.start()
    try:
        assert seen_metrics == [app.metrics]
        assert [svc.name for svc in app.services] == ["readiness", "monitoring", "installer", "probe"]
        import time
        end = time.monotonic() + 60  # bounded wait for the first install pass
        while not app.metrics.ready and time.monotonic() < end:
            time.sleep(0.05)
        assert app.metrics.ready, app.metrics.not_ready_reason
    finally:
        app.shutdown()
    # services stop before the shutdown policy removes the plugin
    assert events == [("start", None), ("stop", True)]
    assert is_standin((host_layout.bin_dir / "istio-cni").read_text())  # then uninstalled: the DEL-only stand-in stays


@pytest.mark.peers
def test_real_control_plane_sigterm_keeps_then_uninstalls(control_plane, plugin_bundle, host_layout):
    """The installer process itself, SIGTERMed twice: DaemonSet present -> plugin stays;
    DaemonSet deleted -> a restarted installer's SIGTERM uninstalls."""
    kapi = control_plane.api
    _real_objects(kapi)
    host, port = control_plane.server.rsplit("//", 1)[1].rsplit(":", 1)
    project_token(host_layout.sa_dir, {"token": control_plane.token.encode(),
                                       "ca.crt": control_plane.ca_file.read_bytes()})
    (host_layout.net_dir / "10-calico.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}]}))
    env = host_layout.env(plugin_bundle, KUBERNETES_SERVICE_HOST=host.strip("[]"), KUBERNETES_SERVICE_PORT=port,
                          DISABLE_SAFE_UPGRADE="false", POD_NAMESPACE=R_NS, INSTALLER_DAEMONSET_NAME=R_DS,
                          KUBERNETES_NODE_NAME=R_NODE)
    try:
        p = InstallerProcess(env)
        p.wait_ready()
        assert p.terminate() == 0
        assert any(r.get("msg") == "leaving plugin and config in place" for r in p.records)
        assert (host_layout.bin_dir / "istio-cni").exists()
        conflist = json.loads((host_layout.net_dir / "10-calico.conflist").read_text())
        assert conflist["plugins"][-1]["type"] == "istio-cni"
        kapi.call("DELETE", R_DS_PATH, ok=(200, 202))
        q = InstallerProcess(env)
        q.wait_ready()
        assert q.terminate() == 0
        assert any(r.get("msg") == "uninstalling the plugin" for r in q.records)
        assert is_standin((host_layout.bin_dir / "istio-cni").read_text())  # DEL-only stand-in
        assert [x["type"] for x in json.loads((host_layout.net_dir / "10-calico.conflist").read_text())["plugins"]] \
            == ["calico"]
    finally:
        kapi.call("DELETE", R_DS_PATH, ok=(200, 202, 404))
        kapi.call("DELETE", R_NODE_PATH, ok=(200, 202, 404))
