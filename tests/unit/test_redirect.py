"""The annotation layer: registry defaults, fixed additions, proxy env/securityContext, and
fail-closed validation (every rejection names the key and the bad value)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from istio_cni.errors import InvalidAnnotation, InvalidNetNS
from istio_cni.redirect import ANNOTATIONS, ipv6_enabled, read_annotation, redirect_from_pod
from istio_cni.rules.config import RedirectConfig

T = "traffic.sidecar.istio.io/"


def pod(annotations=None, env=None, security=None, proxy_in="containers", raw_env=None):
    proxy = {"name": "istio-proxy"}
    if env is not None or raw_env is not None:
        proxy["env"] = raw_env if raw_env is not None else [{"name": k, "value": v} for k, v in env.items()]
    if security is not None:
        proxy["securityContext"] = security
    spec = {"containers": [{"name": "app"}]}
    spec.setdefault(proxy_in, []).append(proxy)
    return {"metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}}, "spec": spec}


def test_defaults_follow_upstream_plugin():
    cfg = redirect_from_pod(pod())
    assert isinstance(cfg, RedirectConfig)
    assert cfg.interception_mode == "REDIRECT"
    assert cfg.inbound_ports_include == ("*",)  # modern Istio: all ports, not containerPorts
    assert cfg.outbound_ip_ranges_include == ("*",)
    assert cfg.inbound_ports_exclude == ("15020", "15021", "15090")
    assert cfg.outbound_ports_exclude == ("15020",)
    assert cfg.proxy_uids == ("1337",) and cfg.proxy_gids == ("1337",)
    assert (cfg.redirect_dns, cfg.capture_all_dns, cfg.drop_invalid, cfg.enable_ipv6) == (False,) * 4


def test_container_ports_do_not_narrow_inbound_capture():
    p = pod()
    p["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
    assert redirect_from_pod(p).inbound_ports_include == ("*",)


@pytest.mark.parametrize("value, expected", [
    ("3306", ("3306", "15020", "15021", "15090")),
    ("", ("15020", "15021", "15090")),
    ("15021,80", ("15021", "80", "15020", "15090")),
    (" 22 , 23 ", ("22", "23", "15020", "15021", "15090")),
])
def test_inbound_excludes_always_end_with_the_proxy_ports(value, expected):
    cfg = redirect_from_pod(pod({T + "excludeInboundPorts": value}))
    assert cfg.inbound_ports_exclude == expected


@pytest.mark.parametrize("value, expected", [("", ()), ("80, 443", ("80", "443")), ("*", ("*",))])
def test_include_inbound_ports_used_verbatim_when_present(value, expected):
    assert redirect_from_pod(pod({T + "includeInboundPorts": value})).inbound_ports_include == expected


def test_cidr_annotations():
    cfg = redirect_from_pod(pod({T + "includeOutboundIPRanges": "10.0.0.0/8,2001:db8::/32",
                                 T + "excludeOutboundIPRanges": "10.1.0.0/16"}))
    assert cfg.outbound_ip_ranges_include == ("10.0.0.0/8", "2001:db8::/32")
    assert cfg.outbound_ip_ranges_exclude == ("10.1.0.0/16",)
    assert redirect_from_pod(pod({T + "includeOutboundIPRanges": ""})).outbound_ip_ranges_include == ()


def test_interface_names_trimmed_as_upstream():
    cfg = redirect_from_pod(pod({T + "excludeInterfaces": " eth1 , net_2.x-y"}))
    assert cfg.exclude_interfaces == ("eth1", "net_2.x-y")


def test_interfaces_and_reroute_preference():
    cfg = redirect_from_pod(pod({T + "excludeInterfaces": "eth1,net2",
                                 T + "kubevirtInterfaces": "old0"}))
    assert cfg.exclude_interfaces == ("eth1", "net2")
    assert cfg.reroute_virtual_interfaces == ("old0",)  # deprecated key still honoured
    both = redirect_from_pod(pod({"istio.io/reroute-virtual-interfaces": "new0",
                                  T + "kubevirtInterfaces": "bad/name"}))
    assert both.reroute_virtual_interfaces == ("new0",)  # preferred key wins; old one unread


@pytest.mark.parametrize("key, value", [
    ("sidecar.istio.io/interceptionMode", "tproxy"),
    ("sidecar.istio.io/interceptionMode", "NONE"),
    (T + "includeInboundPorts", "80,http"),
    (T + "includeInboundPorts", "65536"),
    (T + "includeInboundPorts", "80,,81"),
    (T + "includeInboundPorts", "*,80"),
    (T + "excludeInboundPorts", "*"),  # with the default includeInboundPorts '*'
    (T + "excludeInboundPorts", "-1"),
    (T + "includeInboundPorts", " * "),  # upstream compares with '*' before trimming
    (T + "excludeOutboundPorts", "*"),
    (T + "includeOutboundPorts", "*"),
    (T + "includeOutboundPorts", "1e3"),
    (T + "includeOutboundIPRanges", "10.0.0.1"),
    (T + "includeOutboundIPRanges", " 10.0.0.0/8"),
    (T + "includeOutboundIPRanges", "10.0.0.0/255.0.0.0"),
    (T + "includeOutboundIPRanges", "10.0.0.0/33"),
    (T + "includeOutboundIPRanges", "*,10.0.0.0/8"),
    (T + "excludeOutboundIPRanges", "*"),
    (T + "excludeOutboundIPRanges", "300.1.1.1/8"),
    (T + "excludeInterfaces", "way-too-long-interface-name"),
    (T + "excludeInterfaces", "eth0:1"),
    ("istio.io/reroute-virtual-interfaces", "a/b"),
    (T + "excludeInterfaces", "eth0,"),    # upstream: "empty interface name"
    (T + "excludeInterfaces", " "),
    (T + "excludeInterfaces", "0eth"),     # upstream's ^[a-zA-Z][a-zA-Z0-9_.-]*$
    (T + "excludeInterfaces", "eth@1"),
    (T + "kubevirtInterfaces", "x y"),
])
def test_invalid_annotation_fails_closed_naming_key_and_value(key, value):
    with pytest.raises(InvalidAnnotation) as info:
        redirect_from_pod(pod({key: value}))
    assert key in info.value.msg and repr(value) in info.value.msg


def test_non_string_annotation_value_is_rejected():
    with pytest.raises(InvalidAnnotation, match="includeInboundPorts"):
        redirect_from_pod(pod({T + "includeInboundPorts": 80}))


def test_tproxy_mode():
    assert redirect_from_pod(pod({"sidecar.istio.io/interceptionMode": "TPROXY"})).tproxy


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("True", True),
                                             ("false", False), ("F", False)])
def test_dns_capture_env_means_redirect_and_capture_all(value, expected):
    cfg = redirect_from_pod(pod(env={"ISTIO_META_DNS_CAPTURE": value}))
    assert (cfg.redirect_dns, cfg.capture_all_dns) == (expected, expected)


def test_other_env_flags():
    cfg = redirect_from_pod(pod(env={"INVALID_DROP": "true", "ISTIO_DUAL_STACK": "true"}))
    assert cfg.drop_invalid and cfg.dual_stack


@pytest.mark.parametrize("name", ["ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "ISTIO_DUAL_STACK"])
@pytest.mark.parametrize("word", ["yes", "on", "enabled", "TRue", " true", "2"])
def test_bad_env_flag_fails_closed(name, word):
    # Deliberately stricter than upstream (docs/rules.md): upstream warns and reads false.
    with pytest.raises(InvalidAnnotation) as info:
        redirect_from_pod(pod(env={name: word}))
    assert name in info.value.msg and repr(word) in info.value.msg


def test_env_from_value_from_reads_as_empty_and_false():
    # Upstream stores e.Value ("" for a valueFrom entry): ParseBool fails, it reads false.
    env = [{"name": "ISTIO_META_DNS_CAPTURE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    assert redirect_from_pod(pod(raw_env=env)).redirect_dns is False
    assert redirect_from_pod(pod(env={"INVALID_DROP": ""})).drop_invalid is False


def test_later_env_entry_wins_as_in_upstreams_map():
    env = [{"name": "INVALID_DROP", "value": "false"}, {"name": "INVALID_DROP", "value": "true"}]
    assert redirect_from_pod(pod(raw_env=env)).drop_invalid is True


def test_status_port_annotation_is_not_read():
    # Upstream's registry lists it but NewRedirect never reads it: any value redirects.
    assert redirect_from_pod(pod({"status.sidecar.istio.io/port": "abc"})) == redirect_from_pod(pod())


@pytest.mark.parametrize("include", ["", "80,443"])
def test_exclude_inbound_wildcard_is_unused_unless_all_ports_are_captured(include):
    # Upstream accepts '*' and reads the exclude list only when includeInboundPorts is '*'.
    cfg = redirect_from_pod(pod({T + "excludeInboundPorts": "*", T + "includeInboundPorts": include}))
    assert cfg == redirect_from_pod(pod({T + "includeInboundPorts": include}))


def test_proxy_found_among_native_sidecars():
    cfg = redirect_from_pod(pod(env={"INVALID_DROP": "true"}, proxy_in="initContainers"))
    assert cfg.drop_invalid


@pytest.mark.parametrize("security, uids, gids", [
    ({"runAsUser": 1000670000, "runAsGroup": 1000670001}, ("1000670000",), ("1000670001",)),
    ({"runAsUser": 0}, ("1337",), ("1337",)),
    ({"runAsUser": 0, "runAsGroup": 0}, ("1337",), ("1337",)),
    ({"runAsUser": 2000}, ("2000",), ("1337",)),  # gid does not follow uid (upstream)
    ({"runAsGroup": 3000}, ("1337",), ("3000",)),
    ({}, ("1337",), ("1337",)),
])
def test_proxy_identity_from_security_context(security, uids, gids):
    cfg = redirect_from_pod(pod(security=security))
    assert (cfg.proxy_uids, cfg.proxy_gids) == (uids, gids)


@pytest.mark.parametrize("security", [{"runAsUser": -5}, {"runAsUser": "1000"}, {"runAsGroup": True}])
def test_bad_security_context_fails_closed(security):
    with pytest.raises(InvalidAnnotation, match="securityContext"):
        redirect_from_pod(pod(security=security))


def test_pod_level_security_context_is_not_the_proxy_identity():
    p = pod()
    p["spec"]["securityContext"] = {"runAsUser": 4242}
    assert redirect_from_pod(p).proxy_uids == ("1337",)


@pytest.mark.parametrize("ips, dual, expected", [
    (("10.1.2.3",), False, False),
    (("fd00::5",), False, True),
    (("10.1.2.3", "fd00::5"), False, False),
    (("fd00::5", "10.1.2.3"), False, False),  # any order: the kernel lists IPv4 first anyway
    (("10.1.2.3", "fd00::5"), True, True),
    (("fe80::1", "127.0.0.1", "169.254.0.9", "10.0.0.1"), False, False),
    (("fe80::1", "fd00::1"), False, True),
    (("::ffff:10.0.0.1",), False, False),
    (("::1", "ff02::1", "ff12::3", "224.0.0.5", "2001:db8::7"), False, True),
    (("127.0.0.1", "::1", "10.0.0.1/24"), True, False),
])
def test_ipv6_follows_upstreams_get_local_ip(ips, dual, expected):
    assert ipv6_enabled(ips, dual) is expected
    env = {"ISTIO_DUAL_STACK": "true"} if dual else {}
    assert redirect_from_pod(pod(env=env), addresses=ips).enable_ipv6 is expected


@pytest.mark.parametrize("ips", [(), ("127.0.0.1", "::1"), ("fe80::1", "169.254.3.3", "224.0.0.1")])
@pytest.mark.parametrize("dual", [False, True])
def test_no_usable_netns_address_fails_the_add_as_upstream(ips, dual):
    with pytest.raises(InvalidNetNS, match="no valid local IP address"):
        ipv6_enabled(ips, dual)


def test_no_addresses_given_leaves_ipv6_off():
    assert redirect_from_pod(pod()).enable_ipv6 is False


@pytest.mark.parametrize("bad", [None, [], "pod"])
def test_pod_must_be_an_object(bad):
    with pytest.raises(InvalidAnnotation):
        redirect_from_pod(bad)


def test_missing_metadata_and_proxy_use_defaults():
    assert redirect_from_pod({}) == redirect_from_pod(pod())


def test_registry_lists_every_annotation_upstream_reads():
    keys = {a.key for a in ANNOTATIONS.values()}
    assert {
        "sidecar.istio.io/inject", "sidecar.istio.io/status", "sidecar.istio.io/interceptionMode",
        "istio.io/reroute-virtual-interfaces",
        T + "includeOutboundIPRanges", T + "excludeOutboundIPRanges", T + "includeInboundPorts",
        T + "excludeInboundPorts", T + "includeOutboundPorts", T + "excludeOutboundPorts",
        T + "excludeInterfaces", T + "kubevirtInterfaces",
    } == keys
    assert read_annotation("includeInboundPorts", {}) == ("*",)
    assert read_annotation("excludeOutboundPorts", {}) == ("15020",)


def test_result_is_immutable():
    cfg = redirect_from_pod(pod())
    with pytest.raises(AttributeError):
        cfg.interception_mode = "TPROXY"


def test_module_import_stays_lean():
    # The plugin runs with -I -S; importing the annotation layer must not pull in modules
    # the ADD path is not allowed (re, json, dataclasses, ...), nor ipaddress.
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import istio_cni.redirect;"
        "bad = ('re', 'json', 'dataclasses', 'typing', 'logging', 'subprocess', 'ipaddress');"
        "print(','.join(m for m in bad if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(src)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
