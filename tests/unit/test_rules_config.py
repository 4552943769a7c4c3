"""RedirectConfig: upstream defaults, normalisation, and errors that name field and value."""

from __future__ import annotations

import pytest

from istio_cni.rules.config import ConfigError, RedirectConfig


def test_defaults_are_upstreams():
    cfg = RedirectConfig()
    assert (cfg.proxy_port, cfg.inbound_capture_port, cfg.inbound_tunnel_port) == (
        "15001", "15006", "15008")
    assert cfg.proxy_uids == cfg.proxy_gids == ("1337",)
    assert cfg.interception_mode == "REDIRECT" and not cfg.tproxy
    assert (cfg.inbound_tproxy_mark, cfg.inbound_tproxy_route_table) == ("1337", "133")
    assert cfg.owner_groups_include == ("*",) and cfg.owner_groups_exclude == ()
    assert cfg.host_ipv4_loopback_cidr == "127.0.0.1/32"
    assert cfg.inbound_ports_include == cfg.outbound_ip_ranges_include == ()
    assert not (cfg.enable_ipv6 or cfg.redirect_dns or cfg.drop_invalid or cfg.dual_stack)


def test_comma_strings_split_like_upstream():
    cfg = RedirectConfig(inbound_ports_exclude="6000,7000,", proxy_uids="3, 4",
                         exclude_interfaces=["eth0", ""])
    assert cfg.inbound_ports_exclude == ("6000", "7000")
    assert cfg.proxy_uids == ("3", "4")
    assert cfg.exclude_interfaces == ("eth0",)


def test_gids_default_to_uids_but_can_differ():
    assert RedirectConfig(proxy_uids="3,4").proxy_gids == ("3", "4")
    assert RedirectConfig(proxy_uids="3", proxy_gids="1,2").proxy_gids == ("1", "2")


def test_wildcards_and_cidr_spelling():
    cfg = RedirectConfig(inbound_ports_include="*", outbound_ip_ranges_include="*")
    assert cfg.inbound_ports_include == ("*",) and cfg.outbound_ip_ranges_include == ("*",)
    cfg = RedirectConfig(outbound_ip_ranges_include="2001:DB8:0::/32,10.0.0.1/8")
    # netip.Prefix.String(): IPv6 compressed lower-case, host bits kept.
    assert cfg.outbound_ip_ranges_include == ("2001:db8::/32", "10.0.0.1/8")


def test_dns_servers_keep_their_spelling():
    cfg = RedirectConfig(dns_servers_v6=("::127.0.0.53",))
    assert cfg.dns_servers_v6 == ("::127.0.0.53",)


def test_dns_capture_needs_servers_or_capture_all():
    assert not RedirectConfig(redirect_dns=True).dns_capture_active
    assert RedirectConfig(redirect_dns=True, capture_all_dns=True).dns_capture_active
    assert RedirectConfig(redirect_dns=True, dns_servers_v4="10.0.0.10").dns_capture_active
    assert not RedirectConfig(capture_all_dns=True).dns_capture_active


def test_replace_revalidates():
    cfg = RedirectConfig().replace(proxy_port="15099")
    assert cfg.proxy_port == "15099"
    with pytest.raises(ConfigError):
        RedirectConfig().replace(proxy_port="99999")


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("proxy_port", "abc", "port number"),
        ("inbound_capture_port", "70000", "out of range"),
        ("inbound_tunnel_port", "", "port number"),
        ("proxy_uids", "", "at least one"),
        ("proxy_uids", "root", "numeric id"),
        ("proxy_gids", "1,-2", "numeric id"),
        ("interception_mode", "NONE", "REDIRECT or TPROXY"),
        ("inbound_tproxy_mark", "0x539", "mark"),
        ("inbound_tproxy_route_table", "0", "out of range"),
        ("inbound_ports_include", "*,80", "cannot be combined"),
        ("inbound_ports_exclude", "80;81", "port number"),
        ("outbound_ip_ranges_include", "10.0.0.0", "missing /prefix"),
        ("outbound_ip_ranges_include", "10.0.0.0/33", "not a CIDR"),
        ("outbound_ip_ranges_exclude", "*", "not allowed"),
        ("outbound_ports_include", "http", "port number"),
        ("exclude_interfaces", "a-very-long-interface-name", "interface name"),
        ("reroute_virtual_interfaces", "eth 0", "interface name"),
        ("dns_servers_v4", "::1", "IPv4"),
        ("dns_servers_v6", "10.0.0.1", "IPv6"),
        ("dns_servers_v4", "resolver", "IP address"),
        ("owner_groups_include", "java;rm", "group name"),
        ("host_ipv4_loopback_cidr", "10.0.0.0/8", "127.0.0.0/8"),
        ("host_ipv4_loopback_cidr", "127.0.0.1/40", "IPv4 CIDR"),
        ("redirect_dns", "yes", "true or false"),
        ("enable_ipv6", 1, "true or false"),
    ],
)
def test_bad_values_name_field_and_value(field, value, reason):
    with pytest.raises(ConfigError) as err:
        RedirectConfig(**{field: value})
    assert err.value.field == field
    assert err.value.value == value
    assert reason in str(err.value)
    assert field in str(err.value) and repr(value) in str(err.value)


def test_owner_group_exclude_needs_wildcard_include():
    with pytest.raises(ConfigError) as err:
        RedirectConfig(owner_groups_include="java", owner_groups_exclude="ftp")
    assert err.value.field == "owner_groups_exclude"


def test_owner_group_include_limit():
    RedirectConfig(owner_groups_include=[str(i) for i in range(64)])
    with pytest.raises(ConfigError) as err:
        RedirectConfig(owner_groups_include=[str(i) for i in range(65)])
    assert "at most 64" in str(err.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_unknown_field_is_rejected():
    with pytest.raises(TypeError, match="unknown fields"):
        RedirectConfig(proxy_prot="15001")
