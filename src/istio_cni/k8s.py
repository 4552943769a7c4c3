"""Pod lookup from the host netns: a lean HTTPS GET with bounded retry; fails closed.

The plugin must not import ``kubernetes`` (about 270 ms); one GET of one pod needs a
socket, TLS and a small HTTP/1.1 reader (``transport``).

Retry policy (upstream ``cni/pkg/plugin``: 30 attempts, 1 s apart, configurable here):
404 and transport errors retry (the pod may not be visible yet, the API may be
restarting); 401/403 fail at once, since waiting will not fix credentials or RBAC;
when the attempts run out the ADD fails with code 11 (try again later) and the last cause.
"""

from __future__ import annotations

import time

from . import errors
from .log import log
from .transport import HTTPError, TLSConn, connect, lean_tls_context, read_response, split_server


def bearer_token(cluster) -> str:
    """The bearer token of a kubeconfig user (inline or from its tokenFile); "" for none."""
    if cluster.token:
        return cluster.token
    if cluster.token_file:
        try:
            with open(cluster.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise errors.KubernetesLookupError(
                f"cannot read the service-account token file {cluster.token_file}", e.strerror or ""
            ) from None
    return ""


class Client:
    """GETs JSON objects from the API server named by a kubeconfig ``Cluster``."""

    def __init__(self, cluster, timeout: float = 5.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.scheme, self.host, self.port, self.prefix = split_server(cluster.server)
        self._ctx = lean_tls_context(cluster) if self.scheme == "https" else None
        self._token = bearer_token(cluster)

    def get(self, path: str, timeout: float | None = None):
        t = self.timeout if timeout is None else timeout
        sock = connect(self.host, self.port, t)
        try:
            if self._ctx is not None:
                sock = TLSConn(self._ctx, sock, self.host)
            req = [f"GET {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                   "Accept: application/json", "User-Agent: istio-cni-python", "Connection: close"]
            if self._token:
                req.append(f"Authorization: Bearer {self._token}")
            sock.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
            status, reason, body = read_response(sock)
        finally:
            sock.close()
        if status != 200:
            raise HTTPError(status, reason, body)
        from ._fastpath import json_loads

        return json_loads(body)


def _status_message(body: bytes) -> str:
    try:
        from ._fastpath import json_loads

        return str(json_loads(body).get("message", ""))
    except Exception:
        return body[:200].decode("utf-8", "replace")


def get_pod(conf, namespace: str, name: str, sleep=time.sleep, client=None) -> dict:
    """GET the pod, retrying as the module docstring describes. Never logs the token."""
    if client is None:
        from .kubeconfig import KubeconfigError, load

        try:
            client = Client(load(conf.kubeconfig))
        except KubeconfigError as e:
            raise errors.KubernetesLookupError("cannot use the plugin kubeconfig", str(e)) from None
        except OSError as e:  # unreadable CA/cert files
            raise errors.KubernetesLookupError("cannot load TLS material from the kubeconfig", str(e)) from None
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    last = ""
    for attempt in range(1, conf.lookup_attempts + 1):
        try:
            return client.get(path)
        except HTTPError as e:
            msg = _status_message(e.body)
            if e.status in (401, 403):
                what = "credentials rejected (401)" if e.status == 401 else "forbidden by RBAC (403)"
                raise errors.KubernetesLookupError(
                    f"pod lookup {namespace}/{name}: {what}; check the istio-cni service account, "
                    "its token and its ClusterRole (pods get)",
                    msg,
                ) from None
            last = f"HTTP {e.status} {e.reason}" + (f": {msg}" if msg else "")
        except (OSError, ValueError) as e:  # refused, reset, timeout, TLS failure, bad JSON
            last = f"{type(e).__name__}: {e}"
        log.warning("pod lookup failed, retrying", attempt=attempt,
                    attempts=conf.lookup_attempts, cause=last)
        if attempt < conf.lookup_attempts:
            sleep(conf.retry_interval)
    raise errors.TryAgainLater(
        f"pod {namespace}/{name} not retrievable after {conf.lookup_attempts} attempts", last
    )
