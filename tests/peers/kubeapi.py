"""Plain-REST helpers against a real kube-apiserver (stdlib only), returning the API's own JSON.

Objects go in and come out as plain dicts exactly as the API serves them, which is what the
plugin's code consumes; no client library sits in between to normalise away a bug.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, code: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {code}: {body[:500]}")
        self.code, self.body = code, body


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    """A kubeconfig for one token identity (atomic write, mode 0600: it holds a credential).

    JSON, like the installer writes it: the plugin's fast path (YAML would import PyYAML)."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        json.dump(doc, fh)
    tmp.replace(path)
    return path


class KubeAPI:
    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server, self.token, self.ca_file = server, token, Path(ca_file)
        self._ctx = ssl.create_default_context(cafile=str(ca_file))

    # -- transport --------------------------------------------------------------------------------
    def raw(self, method: str, path: str, body: dict | None = None, *, timeout: float = 15,
            content_type: str = "application/json") -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Accept": "application/json", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def call(self, method: str, path: str, body: dict | None = None, *, ok=(200, 201, 202),
             content_type: str = "application/json") -> dict:
        code, text = self.raw(method, path, body, content_type=content_type)
        if code not in ok:
            raise ApiError(method, path, code, text)
        return json.loads(text) if text else {}

    def _create(self, path: str, obj: dict, exist_ok: bool = False) -> dict:
        return self.call("POST", path, obj, ok=(200, 201, 202, 409) if exist_ok else (200, 201, 202))

    # -- namespaces and identities ----------------------------------------------------------------
    def create_namespace(self, name: str) -> dict:
        # Idempotent: test modules share one control plane and several need e.g. istio-system.
        ns = self._create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": name}}, exist_ok=True)
        self.ensure_service_account(name, "default")
        return ns

    def ensure_service_account(self, namespace: str, name: str) -> dict:
        return self._create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                            exist_ok=True)

    def create_cluster_role(self, name: str, rules: list[dict]) -> dict:
        return self._create("/apis/rbac.authorization.k8s.io/v1/clusterroles",
                            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                             "metadata": {"name": name}, "rules": rules})

    def bind_cluster_role(self, role: str, namespace: str, service_account: str) -> dict:
        return self._create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{role}-{namespace}-{service_account}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]})

    def token_for(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A bound token from the TokenRequest API (signed by the control plane's SA key)."""
        tr = self.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "spec": {"expirationSeconds": seconds}})
        return tr["status"]["token"]

    def limited_identity(self, namespace: str, name: str, rules: list[dict], kubeconfig: Path) -> tuple[str, Path]:
        """ServiceAccount ``name`` allowed only ``rules`` cluster-wide; returns (token, kubeconfig)."""
        self.ensure_service_account(namespace, name)
        role = f"{namespace}-{name}"
        self.create_cluster_role(role, rules)
        self.bind_cluster_role(role, namespace, name)
        token = self.token_for(namespace, name)
        return token, write_kubeconfig(kubeconfig, self.server, self.ca_file, token,
                                       f"system:serviceaccount:{namespace}:{name}")

    # -- workloads --------------------------------------------------------------------------------
    @staticmethod
    def _ns(obj: dict) -> str:
        return (obj.get("metadata") or {}).get("namespace") or "default"

    def create_pod(self, manifest: dict) -> dict:
        return self._create(f"/api/v1/namespaces/{self._ns(manifest)}/pods",
                            {"apiVersion": "v1", "kind": "Pod", **manifest})

    def get_pod(self, namespace: str, name: str) -> dict:
        return self.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def patch_pod(self, namespace: str, name: str, patch: dict) -> dict:
        return self.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", patch,
                         content_type="application/merge-patch+json")

    def delete_pod(self, namespace: str, name: str) -> None:
        # No kubelet confirms termination here, so delete at once instead of waiting for one.
        self.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0",
                  ok=(200, 202, 404))

    def create_daemonset(self, manifest: dict) -> dict:
        return self._create(f"/apis/apps/v1/namespaces/{self._ns(manifest)}/daemonsets",
                            {"apiVersion": "apps/v1", "kind": "DaemonSet", **manifest})

    def get_daemonset(self, namespace: str, name: str) -> dict:
        return self.call("GET", f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}")

    def watch_pods(self, namespace: str, *, resource_version: str = "", timeout_seconds: int = 10,
                   field_selector: str = "") -> Iterator[tuple[str, dict]]:
        """Yield (event type, pod) until the server ends the watch (at most ``timeout_seconds``)."""
        q = {"watch": "1", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "false"}
        if resource_version:
            q["resourceVersion"] = resource_version
        if field_selector:
            q["fieldSelector"] = field_selector
        req = urllib.request.Request(f"{self.server}/api/v1/namespaces/{namespace}/pods?{urllib.parse.urlencode(q)}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self._ctx, timeout=timeout_seconds + 5) as resp:
            for line in resp:
                if line.strip():
                    ev = json.loads(line)
                    yield ev["type"], ev["object"]
