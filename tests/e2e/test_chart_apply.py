"""The rendered manifests against the real kube-apiserver (tests/peers, contract 4).

Server-side apply with dryRun=All and fieldValidation=Strict: every object of every preset is
validated, defaulted and admitted by a real API server, and an unknown or misplaced field is an
error rather than silently dropped. Then the RBAC objects are applied for real and the service
account's rights are asked of the real authorizer (SubjectAccessReview): least privilege is what
the server enforces, not what the YAML looks like.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request

import pytest
from support.chartlib import PLATFORMS

pytestmark = pytest.mark.peers
MANAGER = "istio-cni-chart-test"


class Api:
    def __init__(self, cp) -> None:
        self.server, self.token = cp.server, cp.token
        self.ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        self._plural: dict[tuple[str, str], tuple[str, bool]] = {}

    def request(self, method: str, path: str, body: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, {"message": text}

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(collection path prefix, namespaced) of a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._plural:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            code, doc = self.request("GET", base)
            assert code == 200, f"discovery of {api_version}: {code} {doc}"
            for r in doc["resources"]:
                if "/" not in r["name"]:
                    self._plural[(api_version, r["kind"])] = (f"{base}/{r['name']}", r["namespaced"])
        assert key in self._plural, f"the server does not serve {kind} in {api_version}"
        return self._plural[key]

    def url(self, obj: dict) -> str:
        coll, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        name = obj["metadata"]["name"]
        if namespaced:
            prefix, rest = coll.rsplit("/", 1)
            return f"{prefix}/namespaces/{obj['metadata']['namespace']}/{rest}/{name}"
        return f"{coll}/{name}"

    def apply(self, obj: dict, dry_run: bool) -> tuple[int, dict]:
        q = {"fieldManager": MANAGER, "fieldValidation": "Strict", "force": "true"}
        if dry_run:
            q["dryRun"] = "All"
        return self.request("PATCH", f"{self.url(obj)}?{urllib.parse.urlencode(q)}", obj,
                            content_type="application/apply-patch+yaml")

    def delete(self, obj: dict) -> None:
        self.request("DELETE", self.url(obj))

    def server_version(self) -> str:
        code, v = self.request("GET", "/version")
        assert code == 200, v
        return v["gitVersion"]


@pytest.fixture(scope="module")
def api(control_plane) -> Api:
    return Api(control_plane)


@pytest.fixture(scope="module")
def namespace(api):
    name = f"istio-cni-chart-{secrets.token_hex(3)}"
    code, body = api.request("POST", "/api/v1/namespaces",
                             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert code == 201, body
    yield name
    api.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def kube_version(api) -> str:
    """The server's own version: helm renders version-dependent fields from it on install."""
    version = api.server_version()
    assert re.match(r"^v1\.\d+\.\d+", version), (
        f"kube-apiserver reports {version!r}, not a release version: helm would refuse the chart's "
        "kubeVersion; the binary was built without version stamping (tools/go-tools.sh kube-apiserver)")
    return version


def dry_run_all(api, manifests) -> list[dict]:
    applied = []
    for obj in manifests:
        code, body = api.apply(obj, dry_run=True)
        assert code in (200, 201), (f"{obj['kind']}/{obj['metadata']['name']} rejected by the API "
                                    f"server ({code}): {body.get('message', body)}")
        applied.append(body)
    return applied


@pytest.mark.parametrize("values", [None] + [{"platform": p} for p in PLATFORMS] + [
    {"agent": {"enabled": False}, "repair": {"mode": "label"}, "netfilterBackend": "nft",
     "resourceQuota": {"enabled": True}, "psp_cluster_role": "restricted", "hostNetwork": True,
     "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "extraCapabilities": ["DAC_OVERRIDE"]},
     "imagePullSecrets": ["regcred"], "rollingMaxUnavailable": "10%"},
    {"repair": {"mode": "delete"}, "podLookup": {"deadlineSeconds": 20}, "istioOwnedCNIConfig": True},
], ids=["default", *PLATFORMS, "lean", "delete-mode"])
def test_server_side_dry_run_accepts_every_object(api, namespace, kube_version, render, values):
    manifests = render(values, kube_version=kube_version, namespace=namespace)
    applied = dry_run_all(api, manifests)
    ds = next(o for o in applied if o["kind"] == "DaemonSet")
    # the server's view: defaulted and kept (Strict would have refused anything it did not know)
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["runAsUser"] == 0


def test_server_refuses_a_manifest_with_an_unknown_field(api, namespace, kube_version, render):
    """Guards the guard: Strict validation really is on, so the test above means something."""
    ds = render(None, kube_version=kube_version, namespace=namespace).daemonset
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {"add": ["ALL"]}
    code, body = api.apply(ds, dry_run=True)
    assert code >= 400 and "capabilites" in body.get("message", ""), (code, body)


def review(api, namespace: str, sa_ns: str, verb: str, resource: str, group: str = "",
           name: str = "", subresource: str = "") -> bool:
    attrs = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
    if name:
        attrs["name"] = name
    if subresource:
        attrs["subresource"] = subresource
    code, body = api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{sa_ns}:istio-cni",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}"],
                 "resourceAttributes": attrs}})
    assert code == 201, body
    return body["status"].get("allowed", False)


@pytest.fixture
def applied_rbac(api, namespace, kube_version, render):
    """Apply (for real) the RBAC objects of a render; removed afterwards."""
    made: list[dict] = []

    def apply(values):
        for obj in render(values, kube_version=kube_version, namespace=namespace):
            if obj["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
                code, body = api.apply(obj, dry_run=False)
                assert code in (200, 201), body
                made.append(obj)
    yield apply
    for obj in reversed(made):
        api.delete(obj)


@pytest.mark.parametrize("mode, can_delete, can_label", [
    ("repair", False, False), ("label", False, True), ("delete", True, False)])
def test_real_authorizer_grants_least_privilege(api, namespace, applied_rbac, mode, can_delete, can_label):
    applied_rbac({"repair": {"mode": mode}})
    ns = namespace
    allowed = lambda *a, **k: review(api, *a, **k)  # noqa: E731
    # the plugin's lookup and the watches: pods anywhere
    for verb in ("get", "list", "watch"):
        assert allowed("some-app", ns, verb, "pods")
    assert allowed("some-app", ns, "create", "events")
    assert allowed("some-app", ns, "delete", "pods") is can_delete
    assert allowed("some-app", ns, "patch", "pods", subresource="status") is can_label
    assert not allowed("some-app", ns, "patch", "events")  # events are only created
    # the upgrade check reads its node; nothing else about nodes
    assert allowed("", ns, "get", "nodes", name="node-a")
    assert not allowed("", ns, "list", "nodes")
    assert not allowed("", ns, "patch", "nodes", name="node-a")
    # never the pod spec, never secrets, never other DaemonSets
    assert not allowed("some-app", ns, "patch", "pods")
    assert not allowed("some-app", ns, "update", "pods")
    assert not allowed("some-app", ns, "get", "secrets")
    # the upgrade check: our DaemonSet, in our namespace, read only
    assert allowed(ns, ns, "get", "daemonsets", group="apps", name="istio-cni-node")
    assert not allowed(ns, ns, "get", "daemonsets", group="apps", name="kube-proxy")
    assert not allowed("kube-system", ns, "get", "daemonsets", group="apps", name="istio-cni-node")
    assert not allowed(ns, ns, "delete", "daemonsets", group="apps", name="istio-cni-node")


def test_helm_install_and_uninstall_on_the_real_api_server(api, namespace, helm, control_plane):
    from support.chartlib import CHART

    kc = ["--kubeconfig", str(control_plane.kubeconfig), "--namespace", namespace]
    out = helm.run("install", "istio-cni", str(CHART), *kc, "--set", "platform=k3s").stdout
    assert "STATUS: deployed" in out
    assert "CNI bin dir:       /var/lib/rancher/k3s/data/current/bin" in out  # NOTES.txt
    assert f"kubectl -n {namespace} rollout status daemonset/istio-cni-node" in out
    try:
        code, ds = api.request("GET", f"/apis/apps/v1/namespaces/{namespace}/daemonsets/istio-cni-node")
        assert code == 200 and ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert ds["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] == \
            "/var/lib/rancher/k3s/data/current/bin"
    finally:
        helm.run("uninstall", "istio-cni", *kc)
    for path in (f"/apis/apps/v1/namespaces/{namespace}/daemonsets/istio-cni-node",
                 f"/api/v1/namespaces/{namespace}/configmaps/istio-cni-config",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/istio-cni",
                 "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/istio-cni-repair"):
        code, _ = api.request("GET", path)
        assert code == 404, f"{path} left behind by helm uninstall"
