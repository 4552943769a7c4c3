"""The plugin's commands: cmd_add / cmd_check / cmd_del / cmd_status / cmd_gc.

Until the Kubernetes lookup and netfilter commit land, ADD passes the previous
plugin's result through unchanged (see README, "Status").
"""

from __future__ import annotations

from .log import log
from .versions import convert_result


def _prev_result(args) -> dict:
    conf = args.netconf
    version = conf.get("cniVersion") or "0.1.0"
    prev = conf.get("prevResult")
    if not prev:
        return {"cniVersion": version}
    return convert_result(prev, version)


def _configure_log(args) -> None:
    conf = args.netconf
    level = conf.get("plugin_log_level") or conf.get("log_level")
    if level:
        log.set_level(level)
    log.bind(container=args.container_id)


def cmd_add(args) -> dict:
    _configure_log(args)
    log.debug("ADD", netns=args.netns, ifname=args.ifname)
    return _prev_result(args)


def cmd_check(args) -> None:
    _configure_log(args)
    return None


def cmd_del(args) -> None:
    _configure_log(args)
    return None


def cmd_status(args) -> None:
    return None


def cmd_gc(args) -> None:
    return None


FUNCS = {"ADD": cmd_add, "CHECK": cmd_check, "DEL": cmd_del, "STATUS": cmd_status, "GC": cmd_gc}
