"""Pod lookup from the host netns: a lean HTTPS GET with bounded retry; fails closed.

The plugin must not import ``kubernetes`` (about 270 ms) nor ``http.client`` (pulls in
``email``); one GET of one pod needs a socket, TLS and a small HTTP/1.1 reader.

Retry policy (upstream ``cni/pkg/plugin``: 30 attempts, 1 s apart, configurable here):
404 and transport errors retry (the pod may not be visible yet, the API may be
restarting); 401/403 fail at once, since waiting will not fix credentials or RBAC;
when the attempts run out the ADD fails with code 11 (try again later) and the last cause.
"""

from __future__ import annotations

import time

from . import errors
from .log import log


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"HTTP {status} {reason}")


def _split_server(server: str) -> tuple[str, str, int, str]:
    """``https://host:port/prefix`` -> (scheme, host, port, prefix); IPv6/bracketed hosts ok."""
    scheme, _, rest = server.partition("://")
    hostport, slash, prefix = rest.partition("/")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""
    port_n = int(port) if port else (443 if scheme == "https" else 80)
    return scheme, host, port_n, ("/" + prefix.rstrip("/")) if slash and prefix else ""


def _tls_context(cluster):
    import ssl

    if cluster.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cluster.ca_data:
            import base64

            ctx.load_verify_locations(cadata=base64.b64decode(cluster.ca_data).decode())
        elif cluster.ca_file:
            ctx.load_verify_locations(cafile=cluster.ca_file)
        else:
            ctx.load_default_certs()
    cert, key = cluster.client_cert_file, cluster.client_key_file
    if cluster.client_cert_data:
        cert = _memfile(cluster.client_cert_data)
        key = _memfile(cluster.client_key_data) if cluster.client_key_data else None
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def _memfile(b64: str) -> str:
    """Client cert/key data -> a path ssl can load, without touching the disk (memfd)."""
    import base64
    import os

    fd = os.memfd_create("kubecred", os.MFD_CLOEXEC)
    os.write(fd, base64.b64decode(b64))
    return f"/proc/self/fd/{fd}"


def _bearer(cluster) -> str:
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


def _read_response(sock) -> tuple[int, str, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response headers")
        buf += chunk
        if len(buf) > 1 << 20:
            raise ConnectionError("response headers too large")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"malformed status line {lines[0]!r}")
    status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(sock, body)
    elif "content-length" in headers:
        want = int(headers["content-length"])
        while len(body) < want:
            chunk = sock.recv(max(65536, want - len(body)))
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            body += chunk
        body = body[:want]
    else:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, reason, body


def _read_chunked(sock, buf: bytes) -> bytes:
    out = b""
    while True:
        while b"\r\n" not in buf:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("connection closed mid-chunk")
            buf += more
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("connection closed mid-chunk")
            buf += more
        if size == 0:
            return out
        out += buf[:size]
        buf = buf[size + 2:]


class Client:
    """GETs JSON objects from the API server named by a kubeconfig ``Cluster``."""

    def __init__(self, cluster, timeout: float = 5.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.scheme, self.host, self.port, self.prefix = _split_server(cluster.server)
        self._ctx = _tls_context(cluster) if self.scheme == "https" else None
        self._token = _bearer(cluster)

    def get(self, path: str, timeout: float | None = None):
        import socket

        t = self.timeout if timeout is None else timeout
        sock = socket.create_connection((self.host, self.port), timeout=t)
        try:
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
            req = [f"GET {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                   "Accept: application/json", "User-Agent: istio-cni-python", "Connection: close"]
            if self._token:
                req.append(f"Authorization: Bearer {self._token}")
            sock.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
            status, reason, body = _read_response(sock)
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
