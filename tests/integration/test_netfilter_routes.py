"""TPROXY policy routing over our raw rtnetlink sender, verified with pyroute2 and ``ip``."""

from __future__ import annotations

import pytest

from istio_cni._fastpath import Entered
from istio_cni.errors import NetfilterError
from istio_cni.netfilter import routes
from istio_cni.rules.model import PolicyRoute
from istio_cni.tools import netns as nsutil

ROUTES = (PolicyRoute(4, 1337, 133), PolicyRoute(6, 1337, 133))


def _pyroute2_view(ns: str) -> tuple:
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        rules = {(r.get("family"), r.get_attr("FRA_FWMARK"), r.get_attr("FRA_TABLE"))
                 for fam in (2, 10) for r in ipr.get_rules(family=fam)}
        local = {(r.get("family"), r.get_attr("RTA_TABLE"), r.get("type"))
                 for fam in (2, 10) for r in ipr.get_routes(family=fam, table=133)}
    return rules, local


def test_program_is_idempotent_and_visible(netns):
    ns = netns("rt")
    with Entered(nsutil.path(ns)):
        assert len(routes.missing(ROUTES)) == 4
        routes.program(ROUTES)
        routes.program(ROUTES)  # again: EEXIST for the rule is success, the route is replaced
        assert routes.missing(ROUTES) == []
    rules, local = _pyroute2_view(ns)
    assert {(2, 1337, 133), (10, 1337, 133)} <= rules
    assert {(2, 133, 2), (10, 133, 2)} <= local  # type 2 = RTN_LOCAL
    assert nsutil.exec_in(ns, "ip", "rule", "list").stdout.count("fwmark 0x539 lookup 133") == 1
    assert "local default dev lo" in nsutil.exec_in(ns, "ip", "route", "show", "table", "133").stdout


def test_missing_names_what_is_gone_and_remove_cleans_up(netns):
    ns = netns("rt")
    with Entered(nsutil.path(ns)):
        routes.program(ROUTES)
    nsutil.exec_in(ns, "ip", "-6", "route", "del", "local", "default", "dev", "lo", "table", "133",
                   check=True)
    with Entered(nsutil.path(ns)):
        assert routes.missing(ROUTES) == ["IPv6 route 'local default dev lo table 133' missing"]
        routes.remove(ROUTES)
        routes.remove(ROUTES)  # absent already: fine
        assert len(routes.missing(ROUTES)) == 4
    assert "lookup 133" not in nsutil.exec_in(ns, "ip", "rule", "list").stdout


def test_kernel_refusal_is_a_netfilter_error(netns):
    ns = netns("rt")
    nsutil.exec_in(ns, "ip", "link", "set", "lo", "down", check=True)
    with Entered(nsutil.path(ns)):
        with pytest.raises(NetfilterError, match="local route add failed"):
            routes.program((PolicyRoute(6, 1337, 133),))
