"""The node agent and repair controller as services of the installer's ``App``.

``node_services(settings, metrics)`` returns objects with ``name``, ``start()`` and
``stop(deadline)`` (the App's service protocol) for whatever the settings enable:
``AGENT_ENABLED`` (default true) and ``REPAIR_ENABLED`` / ``REPAIR_MODE`` (+ the other
``REPAIR_*`` settings, ``repair_settings``). Both share one API client and one pod watch, unless
the repair controller's selectors or node differ from the agent's (then it watches on its own).
Their counters go to the installer's ``Metrics``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from istio_cni.log import log

from ..kube.client import api_client_from_settings
from ..kube.podcache import PodCache
from ..repair import RepairController, RepairSettings, cache_serves, pod_cache_for
from . import NodeAgent
from .handler import Handler

if TYPE_CHECKING:
    from ..health import Metrics
    from ..settings import Settings


class AgentService:
    name = "node-agent"

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def start(self) -> None:
        self.agent.start()

    def stop(self, deadline: float | None = None) -> None:
        self.agent.stop()


class RepairService:
    name = "repair-controller"

    def __init__(self, controller: RepairController, cache: PodCache, own_cache: bool) -> None:
        self.controller, self.cache, self.own_cache = controller, cache, own_cache

    def start(self) -> None:
        if self.own_cache:  # the agent is off: the repair controller needs its own watch
            self.cache.start()
        self.controller.start()

    def stop(self, deadline: float | None = None) -> None:
        left = 5.0 if deadline is None else max(0.1, deadline - time.monotonic())
        self.controller.stop(min(left, 5.0))
        if self.own_cache:
            self.cache.stop(min(left, 5.0))


def repair_settings(s: Settings, node: str) -> RepairSettings:
    """The repair controller's settings from the installer's (upstream's REPAIR_* names)."""
    return RepairSettings(
        mode=s.repair_mode,
        node_name=s.repair_node_name or node,
        check_netns=s.repair_check_netns,
        proc_root=s.host_proc_dir,
        netfilter_backend=s.netfilter_backend,
        create_events=s.repair_create_events,
        sidecar_annotation=s.repair_sidecar_annotation,
        init_container_name=s.repair_init_container_name,
        exit_code=s.repair_init_container_exit_code,
        termination_message=s.repair_init_container_termination_message,
        label_key=s.repair_broken_pod_label_key,
        label_value=s.repair_broken_pod_label_value,
        label_selectors=s.repair_label_selectors,
        field_selectors=s.repair_field_selectors,
    )


def _plugin_ready(metrics: Metrics | None) -> Callable[[], bool] | None:
    """The installer's readiness (every part in place on this node), for delete mode; None
    without the installer's Metrics (the controller then never waits)."""
    if metrics is None or not hasattr(metrics, "ready"):
        return None
    return lambda: bool(metrics.ready)


def node_services(s: Settings, metrics: Metrics | None = None) -> list:
    agent_on = getattr(s, "agent_enabled", True)
    repair_on = getattr(s, "repair_enabled", False)
    if not (agent_on or repair_on):
        return []
    node = s.node_name or os.uname().nodename
    try:
        api = api_client_from_settings(s)
    except Exception as e:  # no credentials yet must not stop the installer: the plugin works without us
        log.warning("node agent and repair controller disabled: no usable API credentials", error=str(e)[:300])
        return []
    cache = PodCache(api, node)
    services: list = []
    if agent_on:
        agent = NodeAgent(s.run_dir, node, cache=cache, handler=Handler(cache, metrics=metrics))
        services.append(AgentService(agent))
    if repair_on:
        rs = repair_settings(s, node)
        if agent_on and cache_serves(cache, rs):
            controller = RepairController(api, cache, rs, metrics=metrics, plugin_ready=_plugin_ready(metrics))
            services.append(RepairService(controller, cache, own_cache=False))
        else:
            # Agent off, or repair narrowed by selectors / another node: a watch of its own, on a
            # client of its own (stopping a cache closes its client's streams).
            rapi = api if not agent_on else api_client_from_settings(s)
            rcache = pod_cache_for(rapi, rs)
            controller = RepairController(rapi, rcache, rs, metrics=metrics, plugin_ready=_plugin_ready(metrics))
            services.append(RepairService(controller, rcache, own_cache=True))
    log.info(
        "node services configured",
        agent=agent_on,
        repair=repair_on,
        repair_mode=getattr(s, "repair_mode", ""),
        node=node,
    )
    return services
