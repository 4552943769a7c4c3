"""The node agent: a warm process that answers the plugin's ADD over a Unix socket.

``NodeAgent`` ties together the pod cache (list + watch of this node's pods), the request
handler (the plugin's own ``plan`` + ``netfilter.apply``) and the socket server. The socket
is created only after the first list, so a plugin that finds it gets cache hits.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, TextIO

from istio_cni.log import log

from ..kube.client import ApiError, KubeClient
from ..kube.podcache import PodCache
from .addreports import SpoolDrainer
from .handler import Handler, warm_up
from .server import AgentServer

if TYPE_CHECKING:
    from ..health import Metrics

SOCKET_NAME = "agent.sock"  # istio_cni.config.AGENT_SOCKET_NAME: the plugin derives the same path

__all__ = [
    "NodeAgent",
    "PodCache",
    "Handler",
    "AgentServer",
    "KubeClient",
    "ApiError",
    "SOCKET_NAME",
]


class NodeAgent:
    """Start/stop service object: the cache starts at once, the socket once the cache has synced."""

    def __init__(
        self,
        run_dir: str,
        node_name: str,
        api_client: KubeClient | None = None,
        *,
        cache: PodCache | None = None,
        handler: Handler | None = None,
        log_stream: TextIO | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.socket_path = os.path.join(run_dir, SOCKET_NAME)
        if cache is None:
            if api_client is None:
                raise ValueError("NodeAgent needs an API client (for its pod cache) or a pod cache")
            cache = PodCache(api_client, node_name)
        self.cache = cache
        self.handler = handler if handler is not None else Handler(self.cache, metrics=metrics)
        self.server = AgentServer(self.socket_path, self.handler, log_stream=log_stream)
        # ADD timings of plugins that ran while we were away (or took the direct path)
        self.drainer = SpoolDrainer(getattr(self.handler, "metrics", None), run_dir)
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # server start vs stop: never leave a socket behind
        self._starter: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._serving.is_set()

    def start(self) -> NodeAgent:
        self.cache.start()
        self.drainer.start()
        self._starter = threading.Thread(target=self._serve_when_synced, name="agent-start", daemon=True)
        self._starter.start()
        return self

    def _serve_when_synced(self) -> None:
        while not self._stopped.is_set() and not self.cache.wait_synced(0.5):
            pass
        if self._stopped.is_set():
            return
        try:
            warm_up()
        except Exception as e:  # a broken import will show on the first request too; serve anyway
            log.error("agent warm-up import failed", error=repr(e)[:300])
        with self._lock:
            if self._stopped.is_set():
                return
            self.server.start()
            self._serving.set()

    def wait_ready(self, timeout: float) -> bool:
        return self._serving.wait(timeout)

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if self._serving.is_set():
                self.server.stop()
        if self._starter is not None:
            self._starter.join(2)
        self.drainer.stop()
        self.cache.stop()
