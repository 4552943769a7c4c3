"""One connection cap for the node program's threading servers (health/metrics, node agent).

A thread per connection, but at most ``max_connections`` of them: a connection over the cap
gets ``busy_reply`` (a fixed 503) and is closed at once, without a thread, so a flood of idle
or slow clients cannot grow the process. Each served connection may also carry a lifetime:
``service_actions`` (run by ``serve_forever`` every poll interval) shuts down the ones past
it, which wakes their handler's blocked read.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the mixin's super() calls resolve to in the servers that use it
    _ServerBase = socketserver.BaseServer
else:
    _ServerBase = object


class ConnectionCap(_ServerBase):
    """Mixin for a ``socketserver.ThreadingMixIn`` server; call ``init_cap`` before serving."""

    busy_reply = b""

    def init_cap(self, max_connections: int, lifetime: float = float("inf")) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lifetime = lifetime
        self._open: dict = {}  # socket -> monotonic deadline
        self._open_lock = threading.Lock()

    # request: the connected socket (these are stream servers); Any as in the base class's
    # own union (socket | (bytes, socket) for datagram servers).
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic() + self._lifetime
        super().process_request(request, client_address)  # the thread; on failure the base
        # class calls shutdown_request, which gives the slot back

    def shutdown_request(self, request: Any) -> None:
        # Forgotten under the lock before it is closed, so a cut never shuts down a closed
        # socket whose descriptor number a new connection already reuses.
        with self._open_lock:
            tracked = self._open.pop(request, None) is not None
        super().shutdown_request(request)
        if tracked:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.setblocking(False)
            request.send(self.busy_reply)
        except OSError:
            pass
        self.shutdown_request(request)
        self.refused()

    def refused(self) -> None:
        """Hook: a connection was turned away at the cap."""

    def service_actions(self) -> None:
        self.cut_connections(time.monotonic())

    def cut_connections(self, now: float) -> None:
        with self._open_lock:
            for request, deadline in self._open.items():
                if deadline <= now:
                    try:
                        request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)
