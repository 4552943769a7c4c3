"""Pods on the test node: create, wait (bounded polls, failures carry the node's log tails),
look inside (crictl), connect from a container or from the node, read a pod's netfilter rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

from peers.kubeapi import ApiError

from node.cluster import Node
from node.workloads import answer

POD_TIMEOUT = 90.0
WORKLOAD_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "images" / "workload.py"


def has_istio_rules(rules: str) -> bool:
    """Our chains (x_tables ``ISTIO_*``) or tables (nf_tables ``istio-proxy-*``) are present."""
    return "ISTIO_" in rules or "istio-proxy-" in rules


class PodTimeout(AssertionError):
    pass


class Pods:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.api = node.cp.api

    # -- API ----------------------------------------------------------------------------------------
    def ensure_namespace(self, name: str) -> None:
        self.api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": name}}, ok=(201, 409))
        # The controller-manager creates the namespace's `default` ServiceAccount; pods need it.
        self.wait(lambda: self.api.raw("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
                  f"ServiceAccount default in {name}", 30)

    def create(self, manifest: dict) -> dict:
        return self.api.create_pod(manifest)

    def get(self, namespace: str, name: str) -> dict | None:
        code, body = self.api.raw("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        if code == 404:
            return None
        if code != 200:
            raise ApiError("GET", name, code, body)
        return json.loads(body)

    def list(self, namespace: str, selector: str = "") -> list[dict]:
        q = f"?labelSelector={selector}" if selector else ""
        return self.api.call("GET", f"/api/v1/namespaces/{namespace}/pods{q}")["items"]

    def wait(self, cond, what: str, timeout: float = POD_TIMEOUT, interval: float = 0.2):
        """Poll ``cond()`` until truthy; on timeout fail with ``what`` and the node's log tails."""
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                got = cond()
                if got:
                    return got
            except (OSError, ApiError) as e:  # a transient API hiccup is a retry, not a failure
                last_error = e
            time.sleep(interval)
        raise PodTimeout(f"timed out after {timeout:.0f}s waiting for {what}"
                         f"{f' (last error: {last_error})' if last_error else ''}\n{self.node.diagnostics()}")

    def wait_running(self, namespace: str, name: str, timeout: float = POD_TIMEOUT) -> dict:
        def running():
            pod = self.get(namespace, name)
            if pod and pod.get("status", {}).get("phase") == "Running" and all(
                    c.get("ready") for c in pod["status"].get("containerStatuses", [])):
                return pod
            return None
        try:
            return self.wait(running, f"pod {namespace}/{name} Running and ready", timeout)
        except PodTimeout as e:
            pod = self.get(namespace, name)
            raise PodTimeout(f"{e}\npod status: {json.dumps((pod or {}).get('status'), indent=1)[:3000]}") from None

    def delete(self, namespace: str, name: str, *, wait: bool = True, timeout: float = POD_TIMEOUT) -> None:
        """Delete through kubelet (graceful: kubelet stops the sandbox, runs CNI DEL, confirms)."""
        self.api.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", ok=(200, 202, 404))
        if wait:
            self.wait(lambda: self.get(namespace, name) is None, f"pod {namespace}/{name} deleted", timeout)

    def init_status(self, pod: dict, container: str) -> dict:
        for st in pod.get("status", {}).get("initContainerStatuses", []):
            if st["name"] == container:
                return st
        return {}

    # -- inside the node --------------------------------------------------------------------------
    def sandbox_id(self, namespace: str, name: str) -> str:
        out = self.node.crictl("pods", "--namespace", namespace, "--name", f"^{name}$", "--state", "ready", "-q")
        ids = out.stdout.split()
        assert len(ids) == 1, f"expected one ready sandbox for {namespace}/{name}, crictl says {ids}"
        return ids[0]

    def all_sandboxes(self) -> list[dict]:
        return json.loads(self.node.crictl("pods", "-o", "json").stdout).get("items", [])

    def netns_path(self, namespace: str, name: str) -> str:
        info = json.loads(self.node.crictl("inspectp", self.sandbox_id(namespace, name)).stdout)
        for ns in info["info"]["runtimeSpec"]["linux"]["namespaces"]:
            if ns["type"] == "network":
                return ns["path"]
        raise AssertionError(f"no network namespace in the sandbox of {namespace}/{name}")

    def container_id(self, namespace: str, pod: str, container: str) -> str:
        out = self.node.crictl("ps", "--namespace", namespace, "--pod", self.sandbox_id(namespace, pod),
                               "--name", f"^{container}$", "--state", "running", "-q")
        ids = out.stdout.split()
        assert len(ids) == 1, f"expected one running {container} in {namespace}/{pod}, crictl says {ids}"
        return ids[0]

    def connect_from(self, namespace: str, pod: str, container: str, host: str, port: int) -> dict:
        """``workload connect`` exec'd inside a container (as the container's own user)."""
        cid = self.container_id(namespace, pod, container)
        out = self.node.crictl("exec", cid, "workload", "connect", host, str(port), "--timeout", "5",
                               check=False, timeout=60)
        return answer(out.stdout) if out.stdout.strip() else {"error": f"crictl exec: {out.stderr[-500:]}"}

    def connect_from_node(self, host: str, port: int) -> dict:
        """A connection from the node's own netns (like kubelet or another node would come in)."""
        out = self.node.holder.run("/usr/bin/python3", str(WORKLOAD_SCRIPT), "connect", host, str(port),
                                   "--timeout", "5", check=False, timeout=30)
        return answer(out.stdout) if out.stdout.strip() else {"error": out.stderr[-500:]}

    def http_get_from_node(self, host: str, port: int, path: str) -> str:
        """GET http://host:port/path from the node's netns (e.g. a pod's /metrics)."""
        import http.client

        from node.sandbox import netns_connection

        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.sock = netns_connection(self.node.holder.pid, (host, port), 10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            assert resp.status == 200, f"GET {host}:{port}{path} -> {resp.status}: {body[:300]}"
            return body
        finally:
            conn.close()

    def rules(self, namespace: str, name: str) -> str:
        """Every netfilter rule in the pod's netns, legacy x_tables and nf_tables."""
        path = self.netns_path(namespace, name)
        legacy = self.node.holder.run("nsenter", f"--net={path}", "iptables-legacy-save", check=False).stdout
        nft = self.node.holder.run("nsenter", f"--net={path}", "nft", "list", "ruleset", check=False).stdout
        return legacy + nft

    def pod_ip(self, namespace: str, name: str) -> str:
        return self.get(namespace, name)["status"]["podIP"]
