"""HTTP/1.1 over a Unix socket in the run dir: ``POST /v1/cni``, ``POST /v1/log``, ``GET /healthz``.

The socket appears only once it is listening with mode 0600 (bound under a temporary name,
chmod-ed, then renamed into place), so the plugin never connects to a half-made one; on
stop it is removed, so plugins go straight to the direct path instead of waiting.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler

from istio_cni.log import log

MAX_BODY = 1 << 20
SOCKET_MODE = 0o600


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stops sending mid-request is dropped
    server: _Server

    def log_message(self, format, *args):  # AF_UNIX has no client address; we log ourselves
        pass

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.close_connection = True
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The plugin stopped waiting (its timeout) and took the direct path.
            log.warning("plugin hung up before the agent answered", path=self.path)

    def _body(self) -> bytes | None:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, b'{"message":"Content-Length required"}')
            return None
        if not 0 <= n <= MAX_BODY:
            self._reply(413, b'{"message":"request body too large"}')
            return None
        return self.rfile.read(n)

    def do_GET(self):
        if self.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
        else:
            self._reply(404, b'{"message":"not found"}')

    def do_POST(self):
        body = self._body()
        if body is None:
            return
        if self.path == "/v1/cni":
            try:
                req = json.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self._reply(400, json.dumps({"message": f"bad request body: {e}"}).encode())
                return
            answer = self.server.agent_handler.handle(req)
            self._reply(200, json.dumps(answer).encode())
        elif self.path == "/v1/log":
            self.server.print_plugin_logs(body)
            self._reply(200, b"{}")
        else:
            self._reply(404, b'{"message":"not found"}')


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # A node starting many pods at once connects in bursts; the default backlog of 5 makes
    # the plugins' connect() fail with EAGAIN and fall back to the slow path.
    request_queue_size = 1024
    agent_handler = None
    log_stream = None

    def handle_error(self, request, client_address) -> None:  # one log line, not a traceback
        log.error("agent request failed", error=repr(sys.exc_info()[1])[:300])

    def print_plugin_logs(self, body: bytes) -> None:
        out = self.log_stream or sys.stdout
        for raw in body.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            # Tag the plugin's own JSON lines so `kubectl logs` tells them from the agent's.
            line = '{"source":"plugin",' + line[1:] if line.startswith("{") else json.dumps(
                {"source": "plugin", "msg": line})
            out.write(line + "\n")
        out.flush()


class AgentServer:
    """Owns the socket file and the serving thread."""

    def __init__(self, socket_path: str, handler, log_stream=None) -> None:
        self.socket_path = socket_path
        self.handler = handler
        self.log_stream = log_stream
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> AgentServer:
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        tmp = f"{self.socket_path}.{os.getpid()}.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        server = _Server(tmp, _RequestHandler, bind_and_activate=False)
        server.agent_handler = self.handler
        server.log_stream = self.log_stream
        try:
            server.server_bind()
            os.chmod(tmp, SOCKET_MODE)
            server.server_activate()
            os.replace(tmp, self.socket_path)  # atomic: replaces a stale socket from a crash
        except BaseException:
            server.server_close()
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-server", daemon=True)
        self._thread.start()
        log.info("node agent listening", socket=self.socket_path)
        return self

    def stop(self) -> None:
        # Remove the socket first: new plugin execs then skip the agent at once.
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
