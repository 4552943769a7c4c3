"""The istio-iptables CLI without root: flag/env resolution, IPv6 and DNS discovery, errors."""

from __future__ import annotations

import io

import pytest

from istio_cni.rules.model import PolicyRoute, RuleSet
from istio_cni.tools import iptables_cli as cli


def config(argv, environ=None, ipv6=False, dns=((), ())):
    opts = cli.parse_options(argv, environ or {})
    return cli.config_from_options(opts, ipv6, dns)


def test_short_and_long_flags_fill_the_config():
    cfg = config(["-p", "15099", "--inbound-capture-port=15098", "-u", "3,4", "-g", "5",
                  "-m", "TPROXY", "-b", "*", "-d", "22", "-i", "10.0.0.0/8",
                  "-x", "10.1.0.0/16", "-q", "443", "-o", "25", "-c", "eth9", "-k", "vnet0",
                  "-t", "7", "-r", "200", "-e", "15009"])
    assert cfg.proxy_port == "15099" and cfg.inbound_capture_port == "15098"
    assert cfg.proxy_uids == ("3", "4") and cfg.proxy_gids == ("5",)
    assert cfg.tproxy and cfg.inbound_ports_include == ("*",)
    assert cfg.inbound_ports_exclude == ("22",)
    assert cfg.outbound_ip_ranges_include == ("10.0.0.0/8",)
    assert cfg.outbound_ip_ranges_exclude == ("10.1.0.0/16",)
    assert cfg.outbound_ports_include == ("443",) and cfg.outbound_ports_exclude == ("25",)
    assert cfg.exclude_interfaces == ("eth9",) and cfg.reroute_virtual_interfaces == ("vnet0",)
    assert (cfg.inbound_tproxy_mark, cfg.inbound_tproxy_route_table) == ("7", "200")
    assert cfg.inbound_tunnel_port == "15009"


def test_environment_fills_unset_flags_and_flags_win():
    env = {"ISTIO_INBOUND_PORTS": "80,81", "INBOUND_CAPTURE_PORT": "15098",
           "PROXY_UID": "9", "ISTIO_SERVICE_CIDR": "*"}
    cfg = config(["-b", "443"], env)
    assert cfg.inbound_ports_include == ("443",)
    assert cfg.inbound_capture_port == "15098"
    assert cfg.proxy_uids == ("9",)
    assert cfg.outbound_ip_ranges_include == ("*",)


def test_envoy_port_has_no_environment_variable():
    assert config(["-u", "1"], {"ENVOY_PORT": "15099"}).proxy_port == "15001"


def test_boolean_flags_env_and_upstream_aliases():
    assert config(["-u", "1", "--redirect-dns"]).redirect_dns
    assert not config(["-u", "1", "--redirect-dns=false"], {"REDIRECT_DNS": "true"}).redirect_dns
    assert config(["-u", "1"], {"REDIRECT_DNS": "1"}).redirect_dns
    assert config(["-u", "1"], {"ISTIO_META_DNS_CAPTURE": "true"}).redirect_dns
    assert config(["-u", "1"], {"INVALID_DROP": "true"}).drop_invalid
    assert config(["-u", "1"], {"ISTIO_DUAL_STACK": "True"}).dual_stack
    assert config(["-u", "1"], {"CAPTURE_ALL_DNS": "t"}).capture_all_dns
    # Empty variables count as unset, as with upstream's viper binding.
    assert config(["-u", "1"], {"REDIRECT_DNS": "", "ISTIO_META_DNS_CAPTURE": "1"}).redirect_dns
    assert config(["-u", "1"], {"INBOUND_CAPTURE_PORT": ""}).inbound_capture_port == "15006"


def test_env_only_knobs():
    env = {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp",
           "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}
    cfg = config(["-u", "1"], env)
    assert cfg.owner_groups_exclude == ("888", "ftp")
    assert cfg.host_ipv4_loopback_cidr == "127.0.0.1/8"


def test_proxy_uid_defaults_to_envoy_user_then_1337():
    assert config([], {"ENVOY_USER": "root"}).proxy_uids == ("0",)
    assert config([], {"ENVOY_USER": "no-such-user-here"}).proxy_uids == ("1337",)


def test_interception_mode_empty_means_redirect():
    assert config(["-u", "1", "-m", ""]).interception_mode == "REDIRECT"


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["-p", "abc"], {}, "--envoy-port"),
        (["-b", "*,80"], {}, "--istio-inbound-ports"),
        (["-x", "*"], {}, "--istio-service-exclude-cidr"),
        (["-m", "tproxy"], {}, "--istio-inbound-interception-mode"),
        (["-i", "10.0.0.1"], {}, "--istio-service-cidr"),
        (["--redirect-dns=maybe"], {}, "--redirect-dns"),
        ([], {"INVALID_DROP": "sure"}, "INVALID_DROP"),
        ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"},
         "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        (["--force-iptables-binary", "both", "-n"], {}, "--force-iptables-binary"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(argv, env, named, monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "environ", {"PATH": "/usr/bin:/bin", **env})
    monkeypatch.setattr(cli, "local_addresses", lambda: ["192.0.2.1"])
    assert cli.main(["-u", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--no-such-flag"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "addresses, dual, want",
    [
        (["127.0.0.1", "192.0.2.1", "::1", "2001:db8::1"], False, False),
        (["127.0.0.1", "192.0.2.1", "::1", "2001:db8::1"], True, True),
        (["127.0.0.1", "::1", "fe80::1", "2001:db8::1"], False, True),
        (["127.0.0.1", "169.254.1.1", "192.0.2.1"], True, False),
        (["169.254.1.1", "::ffff:192.0.2.1"], False, False),
    ],
)
def test_ipv6_detection_follows_upstream(addresses, dual, want):
    assert cli.ipv6_enabled(addresses, dual) is want


def test_ipv6_detection_without_global_address_is_an_error():
    with pytest.raises(cli.UsageError, match="no valid local IP"):
        cli.ipv6_enabled(["127.0.0.1", "::1", "fe80::1"], False)


def test_resolv_conf_servers_split_and_canonical():
    text = ("# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\n"
            "nameserver ::127.0.0.53\nnameserver not-an-ip\noptions ndots:5\nnameserver\n")
    assert cli.resolv_conf_servers(text) == (("10.96.0.10",), ("::7f00:35",))


def test_dry_run_render_lists_families_and_routes():
    from istio_cni.rules.builder import build_xtables
    from istio_cni.rules.config import RedirectConfig

    rs = build_xtables(RedirectConfig(interception_mode="TPROXY", inbound_ports_include="*",
                                      enable_ipv6=True))
    text = cli.render_dry_run(rs)
    assert text.startswith("# iptables-restore --noflush\n* mangle\n")
    assert "# ip6tables-restore --noflush\n* mangle\n" in text
    assert text.endswith("# ip -6 route add local default dev lo table 133\n")
    assert rs.routes == (PolicyRoute(4, 1337, 133), PolicyRoute(6, 1337, 133))


def test_dry_run_end_to_end_in_process(monkeypatch):
    monkeypatch.setattr(cli, "local_addresses", lambda: ["192.0.2.1"])
    out = io.StringIO()
    rc = cli.run(cli.parse_options(["-n", "-u", "1", "-b", "80"], {}), out=out)
    assert rc == 0
    assert "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT\n" in out.getvalue()
    assert "ip6tables" not in out.getvalue()


def test_commit_without_backend_is_a_clear_error(monkeypatch, capsys):
    import sys

    monkeypatch.setattr(cli, "local_addresses", lambda: ["192.0.2.1"])
    import istio_cni

    # Both the module cache and the package attribute: `from . import netfilter` prefers
    # the attribute when an earlier test already imported the real backends.
    monkeypatch.setitem(sys.modules, "istio_cni.netfilter", None)  # import fails
    monkeypatch.delattr(istio_cni, "netfilter", raising=False)
    monkeypatch.setattr(cli.os, "environ", {"PATH": "/usr/bin:/bin"})
    assert cli.main(["-u", "1", "--network-namespace", "/run/netns/none"]) == 1
    assert "netfilter backend unavailable" in capsys.readouterr().err


def test_commit_goes_through_netfilter_apply(monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("istio_cni.netfilter")
    fake.apply = lambda path, rs, preferred="auto": calls.append((path, rs, preferred)) or "iptc"
    fake.remove = lambda path, preferred="auto", rs=None: calls.append((path, rs, preferred))
    monkeypatch.setitem(sys.modules, "istio_cni.netfilter", fake)
    import istio_cni

    monkeypatch.setattr(istio_cni, "netfilter", fake, raising=False)
    monkeypatch.setattr(cli, "local_addresses", lambda: ["192.0.2.1"])
    opts = cli.parse_options(["-u", "1", "--network-namespace", "pod1",
                              "--force-iptables-binary", "legacy"], {})
    assert cli.run(opts) == 0
    path, rs, preferred = calls[0]
    assert (path, preferred) == ("/run/netns/pod1", "iptc")
    assert isinstance(rs, RuleSet) and rs.v4
    assert cli.run(cli.parse_options(["--cleanup-only", "--native-nftables", "-u", "1",
                                      "-m", "TPROXY", "-b", "*"], {})) == 0
    path, rs, preferred = calls[1]
    assert (path, preferred) == ("/proc/self/ns/net", "nft")
    assert rs.routes == (PolicyRoute(4, 1337, 133),)  # what --cleanup-only knows to remove


@pytest.mark.parametrize("text, seconds", [("5s", 5.0), ("500ms", 0.5), ("1m30s", 90.0),
                                           ("0", 0.0), ("1.5h", 5400.0), ("250us", 0.00025)])
def test_parse_duration_like_go(text, seconds):
    from istio_cni.tools.iptables_validation import parse_duration

    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "", "s", "5 seconds", "1d"])
def test_parse_duration_rejects(text):
    from istio_cni.tools.iptables_validation import parse_duration

    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("argv, named", [
    (["--run-validation", "--probe-timeout", "soon"], "--probe-timeout"),
    (["--run-validation", "--iptables-probe-port", "70000"], "--iptables-probe-port"),
])
def test_bad_validation_flags_exit_2(argv, named, monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "environ", {"PATH": "/usr/bin:/bin"})
    monkeypatch.setattr(cli, "local_addresses", lambda: ["192.0.2.1"])
    assert cli.main(["-u", "1", "-n", *argv]) == 2
    assert named in capsys.readouterr().err
