"""HTTP/1.1 over a Unix socket in the run dir: ``POST /v1/cni``, ``POST /v1/log``, ``GET /healthz``.

The socket appears only once it is listening with mode 0600 (bound under a temporary name,
chmod-ed, then renamed into place), so the plugin never connects to a half-made one; on
stop it is removed, so plugins go straight to the direct path instead of waiting.
"""

from __future__ import annotations

import io
import json
import os
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, TextIO

from istio_cni.log import log

from ..capped import ConnectionCap
from .addreports import is_report, observe_report

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAX_BODY = 1 << 20
SOCKET_MODE = 0o600
# The plugin writes its whole request at once and waits at most agent_timeout_seconds
# (2 s by default, 30 s at most): a request not fully received within this is from a
# client that stalls or trickles, and is dropped instead of holding a thread.
REQUEST_READ_SECONDS = 5.0
REPLY_WRITE_SECONDS = 5.0  # answers are a few KB; a reader that does not read is dropped
# Concurrent connections (one thread each). kubelet's default max-pods is 110, so a node
# starting all its pods at once still fits; beyond it a plugin gets a 503 at once and
# takes its direct path, instead of idle or slow clients piling up threads.
MAX_CONNECTIONS = 128
_BUSY_BODY = b'{"message":"agent at its connection cap"}'
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
BUSY_LOG_INTERVAL = 10.0


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, all of them together bounded by one monotonic deadline
    (a per-recv timeout alone lets a client trickle one byte per interval forever)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_READ_SECONDS
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain makefile reader: replaced by one with a whole-request deadline
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, time.monotonic() + self.server.request_read_seconds)
        )

    def log_message(self, format: str, *args: Any) -> None:  # AF_UNIX has no client address; we log ourselves
        pass

    def log_error(self, format: str, *args: Any) -> None:  # e.g. "Request timed out": one line of ours, no traceback
        log.warning("plugin request dropped", reason=(format % args)[:200])

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.close_connection = True
        try:
            self.connection.settimeout(REPLY_WRITE_SECONDS)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The plugin stopped waiting (its timeout) and took the direct path.
            log.warning("plugin hung up before the agent answered", path=self.path)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length", "").strip()
        if not (length.isascii() and length.isdigit()):  # int() would take "+1", " 1_0", "١"
            self._reply(411, b'{"message":"Content-Length required"}')
            return None
        n = int(length) if len(length) <= 8 else MAX_BODY + 1
        if not 0 <= n <= MAX_BODY:
            self._reply(413, b'{"message":"request body too large"}')
            return None
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            log.warning(
                "plugin request dropped", reason=f"body not received within {self.server.request_read_seconds} s"
            )
            return None
        if len(body) < n:  # the client hung up mid-body
            self.close_connection = True
            return None
        return body

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
        else:
            self._reply(404, b'{"message":"not found"}')

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path == "/v1/cni":
            try:
                req = json.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError) as e:  # not JSON/UTF-8, nested too deep
                self._reply(400, json.dumps({"message": f"bad request body: {str(e)[:200]}"}).encode())
                return
            answer = self.server.agent_handler.handle(req)
            self._reply(200, json.dumps(answer).encode())
        elif self.path == "/v1/log":
            self.server.print_plugin_logs(body)
            self._reply(200, b"{}")
        else:
            self._reply(404, b'{"message":"not found"}')


class _Server(ConnectionCap, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # A node starting many pods at once connects in bursts; the default backlog of 5 makes
    # the plugins' connect() fail with EAGAIN and fall back to the slow path.
    request_queue_size = 1024
    busy_reply = BUSY_REPLY
    agent_handler: Any = None  # the agent's Handler (or a test's stand-in), set before serving
    log_stream: TextIO | None = None
    max_connections = MAX_CONNECTIONS
    request_read_seconds = REQUEST_READ_SECONDS

    def server_activate(self) -> None:
        super().server_activate()
        self.init_cap(self.max_connections)  # no lifetime cut: the request read has its deadline
        self._busy_refused = 0
        self._busy_logged = 0.0

    def refused(self) -> None:
        self._busy_refused += 1
        now = time.monotonic()
        if now - self._busy_logged >= BUSY_LOG_INTERVAL:  # one line per burst, not per plugin
            log.warning(
                "agent at its connection cap, plugins take the direct path",
                cap=self.max_connections,
                refused=self._busy_refused,
            )
            self._busy_logged = now

    def handle_error(self, request: object, client_address: object) -> None:  # one log line, not a traceback
        log.error("agent request failed", error=repr(sys.exc_info()[1])[:300])

    def print_plugin_logs(self, body: bytes) -> None:
        out = self.log_stream or sys.stdout
        for raw in body.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line:
                continue
            # Tag the plugin's own JSON lines so `kubectl logs` tells them from the agent's;
            # anything that is not a JSON object is quoted, so no client can forge a line.
            try:
                doc = json.loads(line)
            except (ValueError, RecursionError):
                doc = None
            if is_report(doc):  # a direct-path ADD's timing rides with its log lines
                observe_report(getattr(self.agent_handler, "metrics", None), doc)
                continue
            if isinstance(doc, dict):
                doc.pop("source", None)
                line = json.dumps({"source": "plugin", **doc}, separators=(",", ":"))
            else:
                line = json.dumps({"source": "plugin", "msg": line}, separators=(",", ":"))
            out.write(line + "\n")
        out.flush()


class AgentServer:
    """Owns the socket file and the serving thread."""

    def __init__(
        self,
        socket_path: str,
        handler: Any,  # the agent's Handler (or a test's stand-in)
        log_stream: TextIO | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_read_seconds: float = REQUEST_READ_SECONDS,
    ) -> None:
        self.socket_path = socket_path
        self.handler = handler
        self.log_stream = log_stream
        self.max_connections = max_connections
        self.request_read_seconds = request_read_seconds
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
        server.max_connections = self.max_connections
        server.request_read_seconds = self.request_read_seconds
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
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="agent-server", daemon=True
        )
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
