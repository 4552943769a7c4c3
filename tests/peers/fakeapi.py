"""Fast tier: an in-process fake Kubernetes API server for fault injection.

It serves ``GET /api/v1/namespaces/{ns}/pods/{name}`` from an in-memory dict, like the real API
(plain JSON, a v1 Status body on errors), and lets a test script what a path answers next::

    api.script("/api/v1/namespaces/default/pods/p", 500, 500, 200)
    api.script(path, Delay(5))            # slower than the client's timeout
    api.script(path, Status(429, retry_after=1), Reset(), SlowBody(interval=0.5))

Each scripted entry answers one request; after the script runs out the path is served normally.
The real kube-apiserver cannot produce these on demand, hence this server. It listens on
127.0.0.1 only, uses daemon threads, and every wait is capped (``max_delay``) and cut short by
``stop()``, so a test can never hang on it. TLS mode serves a certificate from a fresh CA
(``ca_file``) so the plugin's verification (and its failure) can be tested.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
           504: "Timeout"}


class Status:
    """Answer with this HTTP status and a v1 Status body (200 means: serve the path normally)."""

    def __init__(self, code: int, message: str = "", retry_after: int | None = None) -> None:
        self.code, self.message, self.retry_after = code, message, retry_after


class Delay:
    """Wait ``seconds`` before answering (``then``, default: normally) - provokes client timeouts."""

    def __init__(self, seconds: float, then: object = None) -> None:
        self.seconds, self.then = seconds, then


class Reset:
    """Close the connection with a TCP RST before sending anything."""


class SlowBody:
    """Send headers at once, then the normal body ``chunk`` bytes every ``interval`` seconds."""

    def __init__(self, interval: float, chunk: int = 64) -> None:
        self.interval, self.chunk = interval, chunk


class Seen:
    """One request as the fake saw it."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers

    def __repr__(self) -> str:
        return f"Seen({self.method} {self.path})"


def status_body(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": REASONS.get(code, "Unknown"), "code": code}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle or stuck client connection is dropped, never held forever

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._answer()

    def _answer(self) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0]
        fake._record(Seen(self.command, self.path, dict(self.headers.items())))
        action = fake._next(path)
        while isinstance(action, Delay):
            fake._stopping.wait(min(action.seconds, fake.max_delay))
            action = action.then
        if isinstance(action, Reset):
            self._reset()
            return
        if isinstance(action, int):
            action = Status(action)
        if isinstance(action, Status) and action.code != 200:
            self._send(action.code, status_body(action.code, action.message or f"injected {action.code}"),
                       {"Retry-After": str(action.retry_after)} if action.retry_after is not None else {})
            return
        code, body = fake._serve(path, self.headers.get("Authorization"))
        self._send(code, body, slow=action if isinstance(action, SlowBody) else None)

    def _send(self, code: int, body: dict, headers: dict | None = None, slow: SlowBody | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if slow is None:
            self.wfile.write(data)
            return
        stop = self.server.fake._stopping
        for i in range(0, len(data), slow.chunk):
            if stop.wait(min(slow.interval, self.server.fake.max_delay)):
                break
            self.wfile.write(data[i:i + slow.chunk])
            self.wfile.flush()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAPI

    def handle_error(self, request, client_address):
        # Clients that reject our certificate or hang up mid-answer are what the faults are for;
        # keep the error for the test to inspect instead of printing a traceback to stderr.
        import sys

        self.fake.errors.append(sys.exc_info()[1])


class FakeAPI:
    """The fake server; ``url`` once started. Use as a context manager or call start()/stop()."""

    def __init__(self, *, tls_dir: Path | None = None, token: str | None = None, max_delay: float = 30.0) -> None:
        self.pods: dict[tuple[str, str], dict] = {}
        self.requests: list[Seen] = []
        self.errors: list[BaseException] = []  # exceptions raised while serving (e.g. TLS rejected)
        self.token = token
        self.max_delay = max_delay
        self.ca_file: Path | None = None
        self._tls_dir = tls_dir
        self._scripts: dict[str, list] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- test-facing API --------------------------------------------------------------------------
    def add_pod(self, pod: dict) -> dict:
        meta = pod.get("metadata") or {}
        if not meta.get("name"):
            raise ValueError(f"pod without metadata.name: {pod!r}")
        with self._lock:
            self.pods[(meta.get("namespace", "default"), meta["name"])] = pod
        return pod

    def script(self, path: str, *responses) -> None:
        """Queue responses for ``path`` (no query string): ints (HTTP codes), Status, Delay, Reset, SlowBody."""
        for r in responses:
            if not isinstance(r, (int, Status, Delay, Reset, SlowBody)):
                raise TypeError(f"cannot script {r!r} for {path}: use an int, Status, Delay, Reset or SlowBody")
        with self._lock:
            self._scripts.setdefault(path, []).extend(responses)

    @staticmethod
    def pod_path(namespace: str, name: str) -> str:
        return f"/api/v1/namespaces/{namespace}/pods/{name}"

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for s in self.requests if s.path.split("?", 1)[0] == path)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAPI not started")
        scheme = "https" if self._tls_dir else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeAPI:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        if self._tls_dir is not None:
            from peers.certs import CA, LOOPBACK_SANS

            ca = CA(self._tls_dir, "fake-api-ca")
            cert, key = ca.issue("fake-api", "fake-api", sans=LOOPBACK_SANS)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            # Handshake lazily in the handler thread, so a silent client cannot block accept().
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
            self.ca_file = ca.cert
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- server side ------------------------------------------------------------------------------
    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _next(self, path: str):
        with self._lock:
            queue = self._scripts.get(path)
            return queue.pop(0) if queue else None

    def _serve(self, path: str, authorization: str | None) -> tuple[int, dict]:
        if self.token is not None and authorization != f"Bearer {self.token}":
            return 401, status_body(401, "Unauthorized")
        m = POD_PATH.match(path)
        if m is None:
            return 404, status_body(404, f"the fake API serves only pods, not {path}")
        with self._lock:
            pod = self.pods.get((m["ns"], m["name"]))
        if pod is None:
            return 404, status_body(404, f'pods "{m["name"]}" not found')
        return 200, pod
