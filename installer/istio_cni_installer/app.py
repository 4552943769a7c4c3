"""The node program's process: settings -> services -> wait for SIGTERM -> shutdown policy.

Services are objects with ``name``, ``start()`` and ``stop(deadline)``; they start in list
order and stop in reverse. The node agent and repair controller join through
``service_factories``: callables ``(settings, metrics) -> [service, ...]`` run at start, e.g.
``App(settings, service_factories=[agent.services.node_services])``.
"""

from __future__ import annotations

import signal
import threading
import time

from istio_cni.log import log

from .health import HealthServer, Metrics
from .installer import Installer
from .settings import Settings, parse
from .taint import StartupTaint
from .upgrade import ApiClient, decide


class App:
    def __init__(self, settings: Settings, service_factories: tuple | list = ()) -> None:
        self.s = settings
        self.metrics = Metrics()
        self.installer = Installer(settings, self.metrics)
        self.factories = list(service_factories)
        self.extra: list = []  # what the factories (and the startup taint) made; built in start()
        self.services: list = []
        self.stopping = threading.Event()

    def start(self) -> None:
        self.extra = [svc for make in self.factories for svc in make(self.s, self.metrics)]
        if self.s.startup_taint_key:
            # Removes this node's startup taint once the installer finds every part in place.
            taint = StartupTaint(self.s, self.installer.installed_now, self.metrics)
            self.installer.ready_listeners.append(taint.kick)
            self.extra.append(taint)
        self.services = [
            HealthServer(self.metrics, self.s.bind_address, self.s.readiness_port, "readiness"),
            HealthServer(self.metrics, self.s.bind_address, self.s.monitoring_port, "monitoring"),
            self.installer,
            *self.extra,
        ]
        started = []
        try:
            for svc in self.services:
                svc.start()
                started.append(svc)
        except BaseException:
            for svc in reversed(started):
                svc.stop(time.monotonic() + 5)
            raise

    def shutdown(self) -> None:
        """Stop services, then uninstall unless this is an upgrade/restart; bounded by the grace."""
        grace = self.s.shutdown_grace_seconds or 25.0
        deadline = time.monotonic() + grace
        self.metrics.set_ready(False, "shutting down")
        for svc in reversed(self.services):
            if svc is self.installer or svc in self.extra:
                svc.stop(deadline)
        api_timeout = max(0.5, min(3.0, (deadline - time.monotonic()) / 4))
        keep, reason = decide(self.s, lambda: ApiClient.from_settings(self.s, api_timeout))
        if keep:
            log.info("leaving plugin and config in place", reason=reason)
        else:
            log.info("uninstalling the plugin", reason=reason)
            self.installer.uninstall()
        for svc in reversed(self.services):
            if isinstance(svc, HealthServer):
                svc.stop(deadline)
        self.installer.close()

    def request_stop(self, *_args: object) -> None:
        self.stopping.set()

    def run_until_signal(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        while not self.stopping.wait(1.0):
            if self.installer.error is not None:
                log.error("installer failed; exiting so the pod restarts", error=str(self.installer.error))
                self.shutdown()
                return 1
        log.info("termination signal received")
        self.shutdown()
        return 0


def install_once(settings: Settings) -> dict[str, list[str]]:
    """Install everything once without serving or watching (demo, init-container use).
    Returns the remaining problems by part ({} of empty lists = installed)."""
    inst = Installer(settings)
    try:
        inst.prepare()
        inst.reconcile()
        return inst.check()
    finally:
        inst.close()


def install_into(net_dir: str, bin_dir: str, run_dir: str, bundle_dir: str = "", **env: str) -> dict:
    """One-shot install into a plain directory layout (host path = mounted path), e.g. for
    ``make demo``: inserts our entry into the conflist in ``net_dir``, deploys the bundle
    launcher into ``bin_dir`` and (when a service-account dir with a token is given through
    ``SERVICE_ACCOUNT_DIR``) the kubeconfig into ``run_dir``. Extra settings as env names."""
    base = {
        "MOUNTED_CNI_NET_DIR": net_dir,
        "CNI_NET_DIR": net_dir,
        "MOUNTED_CNI_BIN_DIR": bin_dir,
        "CNI_BIN_DIR": bin_dir,
        "CNI_AGENT_RUN_DIR": run_dir,
        "PLUGIN_BUNDLE_DIR": bundle_dir,
        "MOUNTED_SECONDARY_BIN_DIR": "",
        "SERVICE_ACCOUNT_DIR": env.pop("SERVICE_ACCOUNT_DIR", f"{run_dir}/no-service-account"),
        "KUBERNETES_NODE_NAME": env.pop("KUBERNETES_NODE_NAME", "demo-node"),
    }
    base.update(env)
    return install_once(parse([], base))
