"""Readiness (/readyz), liveness (/healthz) and Prometheus metrics (/metrics) over HTTP.

``Metrics`` is the single place the node program records state; the servers only read it.
Metrics are ``prometheus_client`` objects; /metrics serves ``generate_latest`` from the server
below (not prometheus_client's own HTTP server: this one caps connections and their lifetime).
/readyz is 200 only while the plugin, kubeconfig and conflist entry are all in place (the
DaemonSet's readinessProbe, so a node whose primary CNI has not written its config yet never
looks ready). /healthz fails when the main loop stopped taking heartbeats.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from istio_cni.log import log

from .capped import ConnectionCap

# No ``*_created`` series next to each counter and histogram: upstream's exporter has none, and a
# start timestamp per label set doubles the scrape for nothing (process_start_time_seconds says it).
disable_created_metrics()

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
    """The node program's metrics, on ``prometheus_client`` (one registry per instance).

    Names are upstream's where upstream has the metric (cni/pkg/install/monitoring.go:
    ``istio_cni_installs_total{result}``, ``istio_cni_install_ready``; cni/pkg/repair:
    ``istio_cni_repair_pods_repaired_total{type,result}``); the rest are ours and documented in
    the chart README. ``process_*`` (RSS, CPU, fds) come from prometheus_client's collector.
    """

    # name -> (help, label names)
    COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
        "istio_cni_installs_total": ("Install passes, by result.", ("result",)),
        "istio_cni_drift_repairs_total": (
            "Rewrites after another component changed our files, by part.",
            ("part",),
        ),
        "istio_cni_config_fights_total": ("Times a component was detected reverting our config repeatedly.", ()),
        "istio_cni_agent_requests_total": (
            "Plugin requests the node agent answered, by result (ok/error/fallback).",
            ("result",),
        ),
        "istio_cni_repair_pods_repaired_total": (
            "Repair controller actions on broken pods, by type and result.",
            ("type", "result"),
        ),
        "istio_cni_startup_taint_removed_total": ("Startup taint removals from this node (0 or 1 per process).", ()),
        "istio_cni_agent_fallbacks_total": (
            "Plugin ADDs that wanted the node agent but took the direct path, by reason (absent/unreachable/declined).",
            ("reason",),
        ),
    }
    # Pod-start cost as the plugin processes measure it (exec to result), reported to the agent
    # (``agent.addreports``). Buckets span a warm agent-path ADD (a few ms) to a retried lookup.
    HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
        "istio_cni_add_duration_seconds": (
            "Wall time of a plugin ADD from exec to its result, by path (agent/direct) and result (ok/error).",
            ("path", "result"),
            (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ),
    }

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            name: Counter(name, text, labels, registry=self.registry) for name, (text, labels) in self.COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(name, text, labels, buckets=buckets, registry=self.registry)
            for name, (text, labels, buckets) in self.HISTOGRAMS.items()
        }
        ready = Gauge(
            "istio_cni_install_ready", "1 while the plugin is installed and in place.", registry=self.registry
        )
        ready.set_function(lambda: 1 if self.ready else 0)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds, start time
        self.ready = False
        self.not_ready_reason = "starting"
        self.heartbeat = time.monotonic()
        self.alive = True

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        histogram = self._histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(value)

    def histogram_count(self, name: str, **labels: str) -> int:
        return int(self.registry.get_sample_value(f"{name}_count", labels) or 0)

    def get(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0

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
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry).decode()


def _handler(metrics: Metrics, idle_timeout: float) -> type[BaseHTTPRequestHandler]:
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
                self._reply(200, metrics.render(), CONTENT_TYPE_PLAIN_0_0_4)
            else:
                self._reply(404, "not found\n")

        def _reply(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # probes every few seconds: keep the log quiet
            pass

    return Handler


class BoundedHTTPServer(ConnectionCap, ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` of them, each closed after
    ``lifetime`` seconds whatever it does (the serving loop checks every poll interval)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst of connects waits in the kernel, not in SYN retries
    busy_reply = BUSY_REPLY

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int, lifetime: float
    ) -> None:
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
