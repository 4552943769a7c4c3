"""Parity with upstream istio-iptables' goldens: same restore payloads, byte for byte.

Each golden (conformance/istio-iptables/golden/<case>.golden) is upstream's command
transcript; its ``* table`` ... ``COMMIT`` blocks are the iptables-restore payload (IPv4)
followed by the ip6tables-restore payload (IPv6). The case inputs are rebuilt here from the
table in conformance/README.md.
"""

from __future__ import annotations

import pytest

from istio_cni.rules.builder import build_xtables
from istio_cni.rules.config import RedirectConfig

# Base for every case (README): upstream defaults, IPv6 off, REDIRECT, nothing captured.
UID_GID_34_12 = {"proxy_uids": "3,4", "proxy_gids": "1,2"}
DNS_V4 = {"redirect_dns": True, "dns_servers_v4": ("127.0.0.53",)}
V6_NETS = {"outbound_ip_ranges_exclude": "2001:db8::/32",
           "outbound_ip_ranges_include": "2001:db8::/32"}

CASES = {
    "empty": {},
    "ipv6-empty-inbound-ports": {"inbound_ports_include": "", "enable_ipv6": True},
    "ip-range": {"outbound_ip_ranges_exclude": "1.1.0.0/16",
                 "outbound_ip_ranges_include": "9.9.0.0/16", **DNS_V4, **UID_GID_34_12},
    "tproxy": {"interception_mode": "TPROXY", "inbound_ports_include": "*",
               "outbound_ip_ranges_exclude": "1.1.0.0/16",
               "outbound_ip_ranges_include": "9.9.0.0/16", **DNS_V4,
               "exclude_interfaces": "not-istio-nic", "enable_ipv6": True},
    "ipv6-inbound-ports": {"inbound_ports_include": "4000,5000", "enable_ipv6": True},
    "ipv6-virt-interfaces": {"inbound_ports_include": "4000,5000",
                             "reroute_virtual_interfaces": "eth0,eth1", "enable_ipv6": True},
    "ipv6-ipnets": {"inbound_ports_include": "4000,5000", "inbound_ports_exclude": "6000,7000,",
                    "reroute_virtual_interfaces": "eth0,eth1", **V6_NETS, "enable_ipv6": True},
    "ipv6-uid-gid": {"inbound_ports_include": "4000,5000", "inbound_ports_exclude": "6000,7000",
                     "reroute_virtual_interfaces": "eth0,eth1", **UID_GID_34_12, **V6_NETS,
                     "enable_ipv6": True},
    "ipv6-outbound-ports": {"inbound_ports_include": "", "outbound_ports_include": "32000,31000",
                            "enable_ipv6": True},
    "kube-virt-interfaces": {"reroute_virtual_interfaces": "eth1,eth2",
                             "outbound_ip_ranges_include": "*"},
    "ipnets": {"outbound_ip_ranges_include": "10.0.0.0/8"},
    "ipnets-with-kube-virt-interfaces": {"reroute_virtual_interfaces": "eth1,eth2",
                                         "outbound_ip_ranges_include": "10.0.0.0/8"},
    "inbound-ports-include": {"inbound_ports_include": "32000,31000"},
    "inbound-ports-wildcard": {"inbound_ports_include": "*"},
    "inbound-ports-tproxy": {"inbound_ports_include": "32000,31000",
                             "interception_mode": "TPROXY"},
    "inbound-ports-wildcard-tproxy": {"inbound_ports_include": "*",
                                      "interception_mode": "TPROXY"},
    "dns-uid-gid": {**DNS_V4, "dns_servers_v6": ("::127.0.0.53",), **UID_GID_34_12,
                    "enable_ipv6": True},
    "ipv6-dns-uid-gid": {"enable_ipv6": True, "redirect_dns": True, **UID_GID_34_12},
    "outbound-owner-groups": {"owner_groups_include": "java,202"},
    "outbound-owner-groups-exclude": {"owner_groups_exclude": "888,ftp"},
    "ipv6-dns-outbound-owner-groups": {"enable_ipv6": True, "redirect_dns": True,
                                       "owner_groups_include": "java,202"},
    "ipv6-dns-outbound-owner-groups-exclude": {"enable_ipv6": True, "redirect_dns": True,
                                               "owner_groups_exclude": "888,ftp"},
    "outbound-ports-include": {"outbound_ports_include": "32000,31000"},
    "loopback-outbound-iprange": {"outbound_ip_ranges_include": "127.1.2.3/32", **DNS_V4,
                                  **UID_GID_34_12},
    "basic-exclude-nic": {"exclude_interfaces": "not-istio-nic"},
    "drop-invalid": {"drop_invalid": True},
    "host-ipv4-loopback-cidr": {"host_ipv4_loopback_cidr": "127.0.0.1/8"},
}


def restore_payloads(golden: str) -> tuple[str, str]:
    """Split a golden transcript into (IPv4, IPv6) restore payloads.

    Upstream renders each family's tables in alphabetical order and always has a nat
    table, so the IPv6 payload starts where the table names stop ascending.
    """
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in golden.splitlines():
        line = line.rstrip()
        if line.startswith("* "):
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "COMMIT":
                blocks.append(current)
                current = None
    families: list[list[list[str]]] = [[], []]
    family = 0
    for block in blocks:
        previous = families[family][-1][0] if families[family] else None
        if previous is not None and block[0] <= previous:
            family += 1
            assert family < 2, "more than two families of restore payloads"
        families[family].append(block)
    return tuple("".join("\n".join(b) + "\n" for b in fam) for fam in families)


def test_every_golden_has_a_case(conformance):
    names = {p.stem for p in (conformance / "istio-iptables" / "golden").glob("*.golden")}
    assert names == set(CASES), "README case table and golden files disagree"


@pytest.mark.parametrize("case", sorted(CASES), ids=sorted(CASES))
def test_restore_payload_matches_upstream(conformance, case):
    golden = (conformance / "istio-iptables" / "golden" / f"{case}.golden").read_text()
    want_v4, want_v6 = restore_payloads(golden)
    rules = build_xtables(RedirectConfig(**CASES[case]))
    assert rules.restore_text(4) == want_v4
    assert rules.restore_text(6) == want_v6


def test_splitter_separates_families():
    text = "* mangle\nA\nCOMMIT\n* nat\nB\nCOMMIT\n* nat\nC\nCOMMIT\n* raw\nD\nCOMMIT\n"
    assert restore_payloads(text) == (
        "* mangle\nA\nCOMMIT\n* nat\nB\nCOMMIT\n", "* nat\nC\nCOMMIT\n* raw\nD\nCOMMIT\n"
    )
