"""Readiness (/readyz), liveness (/healthz) and Prometheus metrics (/metrics) over HTTP.

``Metrics`` is the single place the node program records state; the servers only read it.
/readyz is 200 only while the plugin, kubeconfig and conflist entry are all in place (the
DaemonSet's readinessProbe, so a node whose primary CNI has not written its config yet never
looks ready). /healthz fails when the main loop stopped taking heartbeats.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from istio_cni.log import log

from .capped import ConnectionCap

HEARTBEAT_STALE_SECONDS = 120.0
# A probe or scrape is one small request answered at once; a connection that sends nothing
# for this long, or is still open after CONNECTION_LIFETIME_SECONDS (a trickling client), is
# closed, and at most MAX_CONNECTIONS are served at a time (one thread each): the rest get a
# 503 and are closed by the accepting thread, so idle clients cannot pile up threads.
IDLE_TIMEOUT_SECONDS = 5.0
CONNECTION_LIFETIME_SECONDS = 10.0
MAX_CONNECTIONS = 16
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class Metrics:
    COUNTERS = {
        "istio_cni_installs_total": "Install passes, by result.",
        "istio_cni_drift_repairs_total": "Rewrites after another component changed our files, by part.",
        "istio_cni_config_fights_total": "Times a component was detected reverting our config repeatedly.",
        "istio_cni_agent_requests_total": "Plugin requests the node agent answered, by result (ok/error/fallback).",
        "istio_cni_repair_pods_repaired_total": "Repair controller actions on broken pods, by type and result.",
        "istio_cni_startup_taint_removed_total": "Startup taint removals from this node (0 or 1 per process).",
        "istio_cni_agent_fallbacks_total": "Plugin ADDs that wanted the node agent but took the direct path, "
        "by reason (absent/unreachable/declined).",
    }
    # Pod-start cost as the plugin processes measure it (exec to result), reported to the agent
    # (``agent.addreports``). Buckets span a warm agent-path ADD (a few ms) to a retried lookup.
    HISTOGRAMS = {
        "istio_cni_add_duration_seconds": (
            "Wall time of a plugin ADD from exec to its result, by path (agent/direct) and result (ok/error).",
            (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple], float] = {}
        # (name, labels) -> [count per bucket (not cumulative), +Inf count, sum]
        self._histograms: dict[tuple[str, tuple], list] = {}
        self.ready = False
        self.not_ready_reason = "starting"
        self.heartbeat = time.monotonic()
        self.alive = True

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = self.HISTOGRAMS[name][1]
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self._histograms.get(key)
            if h is None:
                h = self._histograms[key] = [[0] * len(buckets), 0, 0.0]
            for i, le in enumerate(buckets):
                if value <= le:
                    h[0][i] += 1
                    break
            else:
                h[1] += 1
            h[2] += value

    def histogram_count(self, name: str, **labels: str) -> int:
        with self._lock:
            h = self._histograms.get((name, tuple(sorted(labels.items()))))
            return 0 if h is None else sum(h[0]) + h[1]

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0)

    def set_ready(self, ready: bool, reason: str = "") -> None:
        reason = "" if ready else reason
        changed = ready != self.ready or reason != self.not_ready_reason
        self.ready, self.not_ready_reason = ready, reason
        if changed:  # logged after the state is visible: a reader of the log may probe at once
            log.info("readiness changed", ready=ready, reason=reason)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def healthy(self) -> bool:
        return self.alive and time.monotonic() - self.heartbeat < HEARTBEAT_STALE_SECONDS

    def render(self) -> str:
        lines = []
        with self._lock:
            items = sorted(self._counters.items())
        for name, text in self.COUNTERS.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} counter")
            for (n, labels), v in items:
                if n == name:
                    lab = ",".join(f'{k}="{val}"' for k, val in labels)
                    lines.append(f"{name}{{{lab}}} {v:g}" if lab else f"{name} {v:g}")
        lines.extend(self._render_histograms())
        lines.append("# HELP istio_cni_install_ready 1 while the plugin is installed and in place.")
        lines.append("# TYPE istio_cni_install_ready gauge")
        lines.append(f"istio_cni_install_ready {1 if self.ready else 0}")
        return "\n".join(lines) + "\n"

    def _render_histograms(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, (list(h[0]), h[1], h[2])) for k, h in self._histograms.items())
        for name, (text, buckets) in self.HISTOGRAMS.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} histogram")
            for (n, labels), (counts, over, total) in items:
                if n != name:
                    continue
                lab = "".join(f'{k}="{val}",' for k, val in labels)
                running = 0
                for le, c in zip(buckets, counts, strict=False):
                    running += c
                    lines.append(f'{name}_bucket{{{lab}le="{le:g}"}} {running}')
                running += over
                lines.append(f'{name}_bucket{{{lab}le="+Inf"}} {running}')
                plain = "{" + lab.rstrip(",") + "}" if lab else ""
                lines.append(f"{name}_sum{plain} {total:.6f}")
                lines.append(f"{name}_count{plain} {running}")
        return lines


def _handler(metrics: Metrics, idle_timeout: float):
    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout  # socket timeout of every read and write (StreamRequestHandler)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/readyz":
                ok = metrics.ready
                self._reply(200 if ok else 503, "ok\n" if ok else f"not ready: {metrics.not_ready_reason}\n")
            elif path == "/healthz":
                ok = metrics.healthy()
                self._reply(200 if ok else 503, "ok\n" if ok else "main loop stalled\n")
            elif path == "/metrics":
                self._reply(200, metrics.render(), "text/plain; version=0.0.4")
            else:
                self._reply(404, "not found\n")

        def _reply(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # probes every few seconds: keep the log quiet
            pass

    return Handler


class BoundedHTTPServer(ConnectionCap, ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` of them, each closed after
    ``lifetime`` seconds whatever it does (the serving loop checks every poll interval)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst of connects waits in the kernel, not in SYN retries
    busy_reply = BUSY_REPLY

    def __init__(self, address: tuple, handler, max_connections: int, lifetime: float) -> None:
        self.init_cap(max_connections, lifetime)
        super().__init__(address, handler)

    def server_close(self) -> None:
        super().server_close()
        self.cut_connections(float("inf"))  # no handler thread outlives the server by an idle timeout


class HealthServer:
    """A service: ``start()`` binds and serves in a thread, ``stop()`` shuts down."""

    def __init__(
        self,
        metrics: Metrics,
        address: str,
        port: int,
        name: str = "health",
        *,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        lifetime: float = CONNECTION_LIFETIME_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.name = name
        self.server = BoundedHTTPServer((address, port), _handler(metrics, idle_timeout), max_connections, lifetime)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, name=name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("serving", service=self.name, address=self.server.server_address[0], port=self.port)

    def stop(self, deadline: float | None = None) -> None:
        self.server.shutdown()
        self.server.server_close()
