"""A small Kubernetes API client for the node agent and repair controller.

Why not the ``kubernetes`` package: importing it costs ~33 MB of resident memory (its
generated model classes) and ~0.3 s, on every node, to make six kinds of request whose
JSON we read as plain dicts anyway. This client reuses the plugin's kubeconfig reader and
TLS/token handling (``istio_cni.kubeconfig``, ``istio_cni.k8s``), so the agent authenticates
exactly like the plugin; the service-account token is re-read per request (rotation).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from istio_cni.k8s import bearer_token
from istio_cni.kubeconfig import Cluster, load
from istio_cni.transport import split_server as _split_server, ssl_context
from istio_cni_installer.kubeconfig import server_url

if TYPE_CHECKING:
    from istio_cni_installer.settings import Settings

DEFAULT_TIMEOUT = 10.0


class ApiError(Exception):
    """A non-2xx answer: ``status`` and the API's Status ``message``."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.status = status
        try:
            self.message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            self.message = body[:200].decode("utf-8", "replace")
        super().__init__(f"{method} {path.split('?')[0]}: HTTP {status} {self.message}".strip())


class KubeClient:
    def __init__(self, cluster: Cluster, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.scheme, self.host, self.port, self.prefix = _split_server(cluster.server)
        self._ctx = ssl_context(cluster) if self.scheme == "https" else None
        self._streams: set = set()
        self._lock = threading.Lock()
        self._closed = False  # after close(): no new watch streams (plain requests still work)

    @classmethod
    def from_kubeconfig(cls, path: str, timeout: float = DEFAULT_TIMEOUT) -> KubeClient:
        return cls(load(path), timeout)

    @classmethod
    def in_cluster(
        cls,
        host: str,
        port: int,
        sa_dir: str,
        ca_file: str = "",
        insecure: bool = False,
        scheme: str = "https",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> KubeClient:
        if not host:
            raise ValueError("no API server address (KUBERNETES_SERVICE_HOST)")
        sa = sa_dir.rstrip("/")
        return cls(
            Cluster(
                server=server_url(scheme, host, port),
                ca_file=ca_file or f"{sa}/ca.crt",
                ca_data="",
                insecure=insecure,
                token="",
                token_file=f"{sa}/token",
                client_cert_file="",
                client_cert_data="",
                client_key_file="",
                client_key_data="",
                namespace="",
            ),
            timeout,
        )

    # ---- transport -------------------------------------------------------------------------
    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._ctx is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict:
        h = {"Accept": "application/json", "User-Agent": "istio-cni-node-agent"}
        token = bearer_token(self.cluster)
        if token:
            h["Authorization"] = f"Bearer {token}"
        if content_type:
            h["Content-Type"] = content_type
        return h

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict:
        """One request; the decoded JSON answer of a 2xx, else ``ApiError``."""
        data = None if body is None else json.dumps(body).encode()
        conn = self._connect(self.timeout if timeout is None else timeout)
        try:
            conn.request(
                method, self.prefix + path, body=data, headers=self._headers(content_type if data is not None else None)
            )
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise ApiError(method, path, resp.status, raw)
        return json.loads(raw) if raw else {}

    def stream_lines(self, path: str, read_timeout: float) -> Iterator[bytes]:
        """GET ``path`` and yield its body line by line (a watch); ``close()`` ends it."""
        conn = self._connect(read_timeout)
        with self._lock:
            if self._closed:
                return
            self._streams.add(conn)
        try:
            conn.request("GET", self.prefix + path, headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError("GET", path, resp.status, resp.read())
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield line
        finally:
            with self._lock:
                self._streams.discard(conn)
            conn.close()

    def close(self) -> None:
        """Abort every open watch stream (their readers see EOF or an error) and refuse new ones."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for conn in streams:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # ---- the calls the agent and repair make --------------------------------------------------------
    @staticmethod
    def pods_path(namespace: str = "", name: str = "", sub: str = "", **query: str | int | bool) -> str:
        base = "/api/v1/pods" if not namespace else f"/api/v1/namespaces/{quote(namespace)}/pods"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        q = {k: v for k, v in query.items() if v not in (None, "")}
        return base + ("?" + urlencode(q) if q else "")

    def get_pod(self, namespace: str, name: str, timeout: float | None = None) -> dict | None:
        try:
            return self.request("GET", self.pods_path(namespace, name), timeout=timeout)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def patch_pod_status(self, namespace: str, name: str, patch: dict) -> dict:
        return self.request(
            "PATCH", self.pods_path(namespace, name, "status"), patch, content_type="application/merge-patch+json"
        )

    def delete_pod(self, namespace: str, name: str, uid: str, resource_version: str) -> dict:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        return self.request("DELETE", self.pods_path(namespace, name), body)

    def create_event(self, namespace: str, event: dict) -> dict:
        return self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", event)


class NoCredentials(ValueError):
    """No in-cluster identity to use: no readable service-account token, or no API server address."""


def in_cluster_client(s: Settings, timeout: float = DEFAULT_TIMEOUT) -> KubeClient:
    """The installer's own identity from settings ``s``: the projected service account
    (token re-read per request, so rotation needs nothing) and ``KUBERNETES_SERVICE_*``.
    Raises ``NoCredentials`` when either is missing."""
    sa = s.service_account_dir.rstrip("/")
    token = f"{sa}/token"
    if not os.access(token, os.R_OK):
        raise NoCredentials(f"service-account token {token} not readable")
    if not s.k8s_service_host:
        raise NoCredentials("no API server address (KUBERNETES_SERVICE_HOST)")
    return KubeClient.in_cluster(
        s.k8s_service_host,
        s.k8s_service_port,
        sa,
        s.kube_ca_file,
        s.skip_tls_verify,
        s.k8s_service_protocol,
        timeout=timeout,
    )


def api_client_from_settings(s: Settings) -> KubeClient:
    """The node program's API client (agent, repair, startup taint): ``AGENT_KUBECONFIG`` if
    set, else the service account the installer itself uses (``in_cluster_client``)."""
    if getattr(s, "agent_kubeconfig", ""):
        return KubeClient.from_kubeconfig(s.agent_kubeconfig)
    return in_cluster_client(s)
