"""IPv6 set-up as upstream does it, in real namespaces: the netns' own addresses decide IPv6
(read over our rtnetlink dump, checked against ``ip``), and ``::6/128`` goes on ``lo`` after
the rules whenever IPv6 is on (through ``netfilter.apply``, for every backend)."""

from __future__ import annotations

import pytest
from support.pods import sidecar_pod

from istio_cni import netfilter
from istio_cni.netfilter import routes
from istio_cni.redirect import ipv6_enabled, redirect_from_pod
from istio_cni.rules.builder import build
from istio_cni.tools import netns as nsutil


def _ip_view(ns: str) -> list:
    """Every address of the netns as ``ip`` lists it: IPv4 dump first, then IPv6."""
    out = []
    for fam in ("-4", "-6"):
        for line in nsutil.exec_in(ns, "ip", "-o", fam, "addr", "show").stdout.splitlines():
            words = line.split()
            out.append(words[words.index("inet" if fam == "-4" else "inet6") + 1].split("/")[0])
    return out


def test_local_addresses_are_the_kernels_ipv4_first(netns):
    # IPv6 added first, as a primary CNI listing its fd00:: address first might.
    ns = netns("addr", addresses=("fd00:15::7/64", "192.0.2.7/24", "fe80::7/64"))
    got = routes.netns_addresses(nsutil.path(ns))
    assert got == _ip_view(ns)
    assert got.index("192.0.2.7") < got.index("fd00:15::7")
    assert ipv6_enabled(got, dual_stack=False) is False
    assert ipv6_enabled(got, dual_stack=True) is True


@pytest.mark.parametrize("backend", ["iptc", "restore-nft", "nft"])
def test_ipv6_on_puts_6_on_lo_idempotently_and_check_sees_it(netns, backend):
    ns = netns("six", addresses=("fd00:15::8/64",))
    path = nsutil.path(ns)
    pod = sidecar_pod("p", annotations={"sidecar.istio.io/interceptionMode": "TPROXY"})
    rs = build(redirect_from_pod(pod, routes.netns_addresses(path)))
    assert rs.lo_addresses == ("::6/128",) and rs.v6 and {r.family for r in rs.routes} == {4, 6}
    netfilter.apply(path, rs, backend)
    netfilter.apply(path, rs, backend)  # a second ADD: the existing address is fine
    lo = nsutil.exec_in(ns, "ip", "-6", "-o", "addr", "show", "dev", "lo").stdout
    assert lo.count("inet6 ::6/128 scope global") == 1, lo
    assert "fwmark 0x539 lookup 133" in nsutil.exec_in(ns, "ip", "-6", "rule").stdout
    assert netfilter.check(path, rs, backend) == []
    nsutil.ip("-n", ns, "-6", "addr", "del", "::6/128", "dev", "lo")
    assert netfilter.check(path, rs, backend) == ["address ::6/128 on lo missing"]


def test_ipv4_only_pod_gets_no_6(netns):
    ns = netns("four", addresses=("192.0.2.9/24", "fd00:15::9/64"))
    path = nsutil.path(ns)
    rs = build(redirect_from_pod(sidecar_pod("p"), routes.netns_addresses(path)))
    assert rs.lo_addresses == () and not rs.v6
    netfilter.apply(path, rs, "iptc")
    assert "::6" not in nsutil.exec_in(ns, "ip", "-6", "addr", "show", "dev", "lo").stdout


def test_dry_run_changes_no_address(netns):
    ns = netns("dry", addresses=("fd00:15::a/64",))
    path = nsutil.path(ns)
    rs = build(redirect_from_pod(sidecar_pod("p"), routes.netns_addresses(path)))
    netfilter.apply(path, rs, "dry-run")
    assert "::6" not in nsutil.exec_in(ns, "ip", "-6", "addr", "show", "dev", "lo").stdout
