"""Run the node agent on its own: ``python -m istio_cni_installer.agent --run-dir D --node-name N``.

The installer normally hosts the agent next to its install loop; this entry point runs
just the agent (and optionally the repair controller), for tests, benchmarks and
debugging. SIGTERM/SIGINT stop it cleanly (the socket is removed first).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..health import HealthServer, Metrics
from ..kube.client import KubeClient, NoCredentials, api_client_from_settings
from ..repair import RepairController, RepairSettings
from ..settings import SettingError, parse
from . import NodeAgent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m istio_cni_installer.agent")
    p.add_argument("--run-dir", required=True, help="directory for agent.sock (the plugin's cni_agent_run_dir)")
    p.add_argument(
        "--node-name", default=os.environ.get("KUBERNETES_NODE_NAME", ""), help="this node (env KUBERNETES_NODE_NAME)"
    )
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG", ""), help="kubeconfig (env KUBECONFIG; default in-cluster)"
    )
    p.add_argument(
        "--monitoring-port",
        type=int,
        default=-1,
        help="serve /metrics on 127.0.0.1:PORT (0: any free port, logged); default off",
    )
    p.add_argument(
        "--repair-mode",
        choices=("off", "repair", "label", "delete"),
        default="off",
        help="also run the repair controller in this mode",
    )
    a = p.parse_args(argv)
    if not a.node_name:
        p.error("--node-name (or KUBERNETES_NODE_NAME) is required")
    if a.kubeconfig:
        api = KubeClient.from_kubeconfig(a.kubeconfig)
    else:  # in-cluster: the node program's own settings (service account, KUBERNETES_SERVICE_*)
        try:
            api = api_client_from_settings(parse([]))
        except (SettingError, NoCredentials) as e:
            p.error(str(e))
    metrics = monitoring = None
    if a.monitoring_port >= 0:
        metrics = Metrics()
        monitoring = HealthServer(metrics, "127.0.0.1", a.monitoring_port, "monitoring")
        monitoring.start()
    agent = NodeAgent(a.run_dir, a.node_name, api, metrics=metrics)
    repair = None
    if a.repair_mode != "off":
        repair = RepairController(api, agent.cache, RepairSettings(mode=a.repair_mode, node_name=a.node_name))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if repair is not None:
        repair.start()
    agent.start()
    done.wait()
    agent.stop()
    if repair is not None:
        repair.stop()
    if monitoring is not None:
        monitoring.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
