"""The node agent: a warm process that answers the plugin's ADD over a Unix socket.

``NodeAgent`` ties together the pod cache (list + watch of this node's pods), the request
handler (the plugin's own ``plan`` + ``netfilter.apply``) and the socket server. The socket
is created only after the first list, so a plugin that finds it gets cache hits.
"""

from __future__ import annotations

import os
import threading

from istio_cni.log import log

from .handler import Handler, warm_up
from .podcache import PodCache
from .server import AgentServer

SOCKET_NAME = "agent.sock"  # istio_cni.config.AGENT_SOCKET_NAME: the plugin derives the same path
SYNC_TIMEOUT = 60.0

__all__ = ["NodeAgent", "PodCache", "Handler", "AgentServer", "make_api_client", "SOCKET_NAME"]


def make_api_client(kubeconfig: str = ""):
    """A ``kubernetes`` ApiClient from ``kubeconfig`` or, when empty, the in-cluster config."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class NodeAgent:
    """Start/stop service object for the installer's main loop."""

    def __init__(self, run_dir: str, node_name: str, api_client=None, *, cache: PodCache | None = None,
                 handler: Handler | None = None, log_stream=None, sync_timeout: float = SYNC_TIMEOUT) -> None:
        self.socket_path = os.path.join(run_dir, SOCKET_NAME)
        self.cache = cache if cache is not None else PodCache(api_client, node_name)
        self.handler = handler if handler is not None else Handler(self.cache)
        self.server = AgentServer(self.socket_path, self.handler, log_stream=log_stream)
        self.sync_timeout = sync_timeout
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._starter: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._serving.is_set()

    def start(self) -> NodeAgent:
        self.cache.start()
        self._starter = threading.Thread(target=self._serve_when_synced, name="agent-start", daemon=True)
        self._starter.start()
        return self

    def _serve_when_synced(self) -> None:
        while not self._stopped.is_set():
            if self.cache.wait_synced(min(self.sync_timeout, 1.0)):
                break
        if self._stopped.is_set():
            return
        try:
            warm_up()
        except Exception as e:  # a broken import will show on the first request too; serve anyway
            log.error("agent warm-up import failed", error=repr(e)[:300])
        self.server.start()
        self._serving.set()

    def wait_ready(self, timeout: float) -> bool:
        return self._serving.wait(timeout)

    def stop(self) -> None:
        self._stopped.set()
        if self._serving.is_set():
            self.server.stop()
        if self._starter is not None:
            self._starter.join(5)
        self.cache.stop()

    def metrics_text(self) -> str:
        """Prometheus text lines for the installer's /metrics."""
        lines = ["# TYPE istio_cni_agent_requests_total counter"]
        for outcome, n in sorted(self.handler.counts.items()):
            lines.append(f'istio_cni_agent_requests_total{{result="{outcome}"}} {n}')
        lines += ["# TYPE istio_cni_agent_cached_pods gauge", f"istio_cni_agent_cached_pods {len(self.cache)}",
                  "# TYPE istio_cni_agent_relists_total counter",
                  f"istio_cni_agent_relists_total {self.cache.relists}"]
        return "\n".join(lines) + "\n"
