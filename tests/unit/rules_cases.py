"""The upstream golden cases as ``RedirectConfig`` keyword sets.

Transcribed from the case table in ../shared/conformance/README.md (istio-iptables and
istio-nftables sections). The README's base configuration (ports 15001/15006/15008, uid=gid
1337, TPROXY mark 1337 / table 133, owner groups ``*``, loopback 127.0.0.1/32, nothing
captured, IPv6 off, REDIRECT) is exactly ``RedirectConfig``'s defaults, so each entry lists
only the case's own settings. Strings are kept as upstream spells them (``"6000,7000,"``
with its trailing comma, ``"3,4"``) so the config's own list parsing is exercised too.

Shared by the x_tables golden tests and the nftables golden tests: one table, one truth.
"""

from __future__ import annotations

DNS_V4 = ("127.0.0.53",)

IPTABLES_CASES: dict[str, dict] = {
    "empty": {},
    "ipv6-empty-inbound-ports": {"inbound_ports_include": "", "enable_ipv6": True},
    "ip-range": {
        "outbound_ip_ranges_exclude": "1.1.0.0/16",
        "outbound_ip_ranges_include": "9.9.0.0/16",
        "redirect_dns": True,
        "dns_servers_v4": DNS_V4,
        "proxy_gids": "1,2",
        "proxy_uids": "3,4",
    },
    "tproxy": {
        "interception_mode": "TPROXY",
        "inbound_ports_include": "*",
        "outbound_ip_ranges_exclude": "1.1.0.0/16",
        "outbound_ip_ranges_include": "9.9.0.0/16",
        "redirect_dns": True,
        "dns_servers_v4": DNS_V4,
        "exclude_interfaces": "not-istio-nic",
        "enable_ipv6": True,
    },
    "ipv6-inbound-ports": {"inbound_ports_include": "4000,5000", "enable_ipv6": True},
    "ipv6-virt-interfaces": {
        "inbound_ports_include": "4000,5000",
        "reroute_virtual_interfaces": "eth0,eth1",
        "enable_ipv6": True,
    },
    "ipv6-ipnets": {
        "inbound_ports_include": "4000,5000",
        "inbound_ports_exclude": "6000,7000,",
        "reroute_virtual_interfaces": "eth0,eth1",
        "outbound_ip_ranges_exclude": "2001:db8::/32",
        "outbound_ip_ranges_include": "2001:db8::/32",
        "enable_ipv6": True,
    },
    "ipv6-uid-gid": {
        "inbound_ports_include": "4000,5000",
        "inbound_ports_exclude": "6000,7000",
        "reroute_virtual_interfaces": "eth0,eth1",
        "proxy_gids": "1,2",
        "proxy_uids": "3,4",
        "outbound_ip_ranges_exclude": "2001:db8::/32",
        "outbound_ip_ranges_include": "2001:db8::/32",
        "enable_ipv6": True,
    },
    "ipv6-outbound-ports": {
        "inbound_ports_include": "",
        "outbound_ports_include": "32000,31000",
        "enable_ipv6": True,
    },
    "kube-virt-interfaces": {
        "reroute_virtual_interfaces": "eth1,eth2",
        "outbound_ip_ranges_include": "*",
    },
    "ipnets": {"outbound_ip_ranges_include": "10.0.0.0/8"},
    "ipnets-with-kube-virt-interfaces": {
        "reroute_virtual_interfaces": "eth1,eth2",
        "outbound_ip_ranges_include": "10.0.0.0/8",
    },
    "inbound-ports-include": {"inbound_ports_include": "32000,31000"},
    "inbound-ports-wildcard": {"inbound_ports_include": "*"},
    "inbound-ports-tproxy": {"inbound_ports_include": "32000,31000", "interception_mode": "TPROXY"},
    "inbound-ports-wildcard-tproxy": {"inbound_ports_include": "*", "interception_mode": "TPROXY"},
    "dns-uid-gid": {
        "redirect_dns": True,
        "dns_servers_v4": DNS_V4,
        "dns_servers_v6": ("::127.0.0.53",),
        "proxy_gids": "1,2",
        "proxy_uids": "3,4",
        "enable_ipv6": True,
    },
    "ipv6-dns-uid-gid": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "proxy_gids": "1,2",
        "proxy_uids": "3,4",
    },
    "outbound-owner-groups": {"owner_groups_include": "java,202"},
    "outbound-owner-groups-exclude": {"owner_groups_exclude": "888,ftp"},
    "ipv6-dns-outbound-owner-groups": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_include": "java,202",
    },
    "ipv6-dns-outbound-owner-groups-exclude": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_exclude": "888,ftp",
    },
    "outbound-ports-include": {"outbound_ports_include": "32000,31000"},
    "loopback-outbound-iprange": {
        "outbound_ip_ranges_include": "127.1.2.3/32",
        "redirect_dns": True,
        "dns_servers_v4": DNS_V4,
        "proxy_gids": "1,2",
        "proxy_uids": "3,4",
    },
    "basic-exclude-nic": {"exclude_interfaces": "not-istio-nic"},
    "drop-invalid": {"drop_invalid": True},
    "host-ipv4-loopback-cidr": {"host_ipv4_loopback_cidr": "127.0.0.1/8"},
}

# The nftables suite has every iptables case plus one of its own.
NFTABLES_CASES: dict[str, dict] = {
    **IPTABLES_CASES,
    "inbound-ports-empty-tproxy": {"inbound_ports_include": "", "interception_mode": "TPROXY"},
}


def config_for(name: str, cases: dict[str, dict] = NFTABLES_CASES):
    """The ``RedirectConfig`` of golden case ``name``."""
    from istio_cni.rules.config import RedirectConfig

    return RedirectConfig(**cases[name])
