"""Every backend, real kernel, real TCP: the committed rules redirect what they should.

Topology: a "pod" netns wired to a "peer" netns by a veth pair.
pod 169.254.77.1/29 fd00:77::1/64 -- peer 169.254.77.2/29 (+ .3) fd00:77::2/64 (+ ::3).
The rule set comes from the x_tables/nftables builders (``rules.builder.build``).
"""

from __future__ import annotations

import pytest
from traffic import Listeners, connect

from istio_cni import netfilter
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.tools import netns as nsutil

BACKENDS = ["iptc", "nft", "restore-legacy", "restore-nft"]
POD4, PEER4, EXCLUDED4 = "169.254.77.1", "169.254.77.2", "169.254.77.3"
POD6, PEER6, EXCLUDED6 = "fd00:77::1", "fd00:77::2", "fd00:77::3"


def redirect_config(**kw) -> RedirectConfig:
    base = dict(inbound_ports_include="*", outbound_ip_ranges_include="*",
                outbound_ports_exclude="9090",
                outbound_ip_ranges_exclude=f"{EXCLUDED4}/32,{EXCLUDED6}/128", enable_ipv6=True)
    base.update(kw)
    return RedirectConfig(**base)


@pytest.fixture
def pod_and_peer(netns):
    pod, peer = netns("pod"), netns("peer")
    a, b = nsutil.veth_pair(pod, peer, f"{POD4}/29", f"{PEER4}/29")
    nsutil.ip("-n", peer, "addr", "add", f"{EXCLUDED4}/29", "dev", b)
    nsutil.ip("-n", pod, "-6", "addr", "add", f"{POD6}/64", "dev", a, "nodad")
    for addr in (PEER6, EXCLUDED6):
        nsutil.ip("-n", peer, "-6", "addr", "add", f"{addr}/64", "dev", b, "nodad")
    return pod, peer


@pytest.mark.parametrize("backend", BACKENDS)
def test_redirect_mode_traffic(backend, pod_and_peer):
    pod, peer = pod_and_peer
    rs = build(redirect_config())
    assert netfilter.apply(nsutil.path(pod), rs, backend) == backend
    assert netfilter.check(nsutil.path(pod), rs, backend) == []
    with Listeners(pod, ["15001", "15006", "8080"]), Listeners(peer, ["8080", "9090"]):
        for peer_addr, pod_addr in ((PEER4, POD4), (PEER6, POD6)):
            out = connect(pod, peer_addr, 8080)
            assert out["port"] == 15001 and out["orig"] == [peer_addr, 8080], out

            as_proxy = connect(pod, peer_addr, 8080, uid=1337)
            assert as_proxy["port"] == 8080 and as_proxy["orig"] is None, as_proxy

            excluded_port = connect(pod, peer_addr, 9090)
            assert excluded_port["port"] == 9090 and excluded_port["orig"] is None, excluded_port

            excluded = EXCLUDED4 if peer_addr == PEER4 else EXCLUDED6
            excluded_cidr = connect(pod, excluded, 8080)
            assert excluded_cidr["port"] == 8080 and excluded_cidr["local"][0] == excluded

            inbound = connect(peer, pod_addr, 8080)
            assert inbound["port"] == 15006 and inbound["orig"] == [pod_addr, 8080], inbound


@pytest.mark.parametrize("backend", BACKENDS)
def test_tproxy_inbound_reaches_transparent_listener(backend, pod_and_peer):
    pod, peer = pod_and_peer
    rs = build(redirect_config(interception_mode="TPROXY"))
    assert rs.routes, "TPROXY needs policy routes"
    netfilter.apply(nsutil.path(pod), rs, backend)
    assert netfilter.check(nsutil.path(pod), rs, backend) == []
    with Listeners(pod, ["15006t", "15001"]):
        for pod_addr in (POD4, POD6):
            got = connect(peer, pod_addr, 8080)
            # TPROXY does not NAT: the transparent socket's local address is the original
            # destination (conntrack, when it tracks the flow, reports the same tuple).
            assert got["port"] == 15006 and got["local"] == [pod_addr, 8080], got
            assert got["orig"] in (None, [pod_addr, 8080])


def test_without_rules_nothing_is_redirected(pod_and_peer):
    """The control: the same listeners and clients, no rules, no redirect."""
    pod, peer = pod_and_peer
    with Listeners(peer, ["8080"]):
        got = connect(pod, PEER4, 8080)
    assert got["port"] == 8080 and got["orig"] is None
