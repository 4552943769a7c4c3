"""The compiled rule encoder (``xtenc.encode_specs``, ``_nf_xtenc.c``) against the Python one.

The kernel must receive the same bytes whichever path encoded a rule: for every rule the
compiled path accepts, its entry equals ``xtenc.encode(xt.parse(spec))`` byte for byte and
its identity (what ``check`` and the clearing walk compare) equals ``xtenc.identity``; for
every rule Python rejects, the compiled path declines (so the Python error still reaches
the caller). The corpus: every rule of every upstream golden, rule sets built from many
``RedirectConfig`` variants, and hand-written edge cases around the subset's borders.
"""

from __future__ import annotations

import struct

import pytest
from nf_goldens import iptables_cases, iptables_tables

from istio_cni.netfilter import iptc, xt, xtenc
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.rules.model import Rule, Table

VARIANTS = [
    {},
    {"interception_mode": "TPROXY"},
    {"redirect_dns": True, "capture_all_dns": True, "dns_servers_v4": ("192.0.2.10",),
     "dns_servers_v6": ("fd00::a",), "enable_ipv6": True},
    {"enable_ipv6": True, "dual_stack": True,
     "outbound_ip_ranges_exclude": ("198.51.100.0/24", "fd00::/8"),
     "outbound_ip_ranges_include": ("203.0.113.0/24",), "inbound_ports_exclude": ("15020", "8080"),
     "outbound_ports_exclude": ("9000",), "exclude_interfaces": ("eth9",),
     "reroute_virtual_interfaces": ("tun0",)},
    {"interception_mode": "TPROXY", "enable_ipv6": True, "redirect_dns": True,
     "drop_invalid": True, "inbound_ports_include": ("80", "443"),
     "owner_groups_exclude": ("1000",)},
    {"owner_groups_include": ("1000", "1001"), "outbound_ports_include": ("80",),
     "proxy_uids": ("1337", "1338")},
    {"inbound_ports_include": ("*",), "enable_ipv6": True, "redirect_dns": True},
    {"outbound_ip_ranges_include": ("*",), "enable_ipv6": True,
     "outbound_ip_ranges_exclude": ("169.254.169.254/32", "192.0.2.0/24"),
     "inbound_ports_exclude": ("15090", "15021", "15020")},
]

EDGE_CASES = """\
-p tcp -j REDIRECT --to-port 15001-15005
-p udp -j REDIRECT
! -p tcp -j ACCEPT
! -p all -j DROP
-p icmp -j DROP
-p sctp -j QUEUE
-p icmpv6 -j RETURN
-p udp ! --sport 53 ! --dport 1000:2000 -j RETURN
-p tcp ! --dport 5 --dport 6 -j RETURN
-p udp -m tcp --dport 80 -j RETURN
-p tcp -m owner --uid-owner 1 --dport 5 --sport 7 -j RETURN
-m owner --uid-owner 1-100 --gid-owner 007 -j RETURN
-m owner ! --uid-owner 1 --uid-owner 2 -j RETURN
-m owner --uid-owner 4294967295 -j RETURN
-m owner --uid-owner 4294967296 -j RETURN
-m owner --uid-owner 1-2-3 -j RETURN
-m owner -m owner --uid-owner 5 -j RETURN
! -i eth+ ! -o + -j RETURN
-i abcdefghijklmno -j RETURN
-i abcdefghijklmnop -j RETURN
--in-interface x --out-interface y -j RETURN
! -s 10.1.2.3/0 ! -d 10.0.0.1/31 -j RETURN
--source 169.254.1.1/17 --destination 192.0.2.4/32 -j RETURN
! -s fd00::1:2:3/127 -d ::/0 -j RETURN
-s 10.0.0.1/032 -j RETURN
-s 10.0.0.1/ -j RETURN
-s 10.0.0.1/33 -j RETURN
-s fd00::1/129 -j RETURN
-j ABCDEFGHIJKLMNOPQRSTUVWXYZ12
-j ABCDEFGHIJKLMNOPQRSTUVWXYZ123
-j RETURN -p tcp
-j RETURN --dport 5
-p tcp --dport 0x50 -j RETURN
-p tcp --dport 080 -j RETURN
-p tcp --dport 5:3 -j RETURN
-p tcp --dport 70000 -j RETURN
-p tcp --dport 5: -j RETURN
--dport 5 -j RETURN
-p tcp -j REDIRECT --to-ports 70000
-p tcp -j REDIRECT --to-ports 15001-
-p tcp --sport 1 --sport 2 --dport 3 -m udp --dport 4 -j REDIRECT --to-ports 1
-p tcp -m multiport --dports 1,2 -j RETURN
-j MARK --set-mark 5
-p tcp -j RETURN !
-p
! ! -p tcp -j RETURN
-m owner --uid-owner 1 -j RETURN -j ACCEPT
-j"""


def _corpus(conformance) -> set:
    specs = set()
    for case in iptables_cases(conformance):
        v4, v6 = iptables_tables(conformance / "istio-iptables" / "golden" / f"{case}.golden")
        for family, tables in ((4, v4), (6, v6)):
            specs.update((family, r.spec) for t in tables for r in t.rules)
    for kwargs in VARIANTS:
        rs = build(RedirectConfig(**kwargs))
        for family, tables in ((4, rs.v4), (6, rs.v6)):
            specs.update((family, r.spec) for t in tables for r in t.rules)
    for line in EDGE_CASES.splitlines():
        specs.update((family, tuple(line.split())) for family in (4, 6))
    specs.update({(4, ()), (4, ("-s", "10.0.0.1\0", "-j", "RETURN")),
                  (4, ("-i", "eth\u00e9", "-j", "RETURN"))})
    return specs


def _python(spec: tuple, family: int):
    """(entry, identity) from the Python path, or None when it rejects the rule."""
    try:
        parsed = xt.parse(spec, family)
        return xtenc.encode(parsed), xtenc.identity(parsed)
    except (ValueError, OverflowError, struct.error):  # XtParseError, or a value that does not fit
        return None


def test_compiled_entries_equal_python_entries(conformance):
    specs = sorted(_corpus(conformance), key=repr)
    accepted = 0
    for family in (4, 6):
        mine = [s for f, s in specs if f == family]
        compiled = xtenc.encode_specs(mine, family)
        for spec, entry in zip(mine, compiled, strict=True):
            assert entry == xtenc.encode_spec(spec, family), spec  # batch == one at a time
            if entry is None:
                continue
            ref = _python(spec, family)
            assert ref is not None, f"compiled path accepted what Python rejects: {spec}"
            assert entry == ref[0], (family, spec, entry.hex(), ref[0].hex())
            assert xtenc.identity_of_entry(entry, family) == ref[1], (family, spec)
            accepted += 1
    assert accepted >= 100  # the corpus really exercises the compiled path


def test_default_rule_sets_take_the_compiled_path():
    for kwargs in ({}, {"enable_ipv6": True, "redirect_dns": True}):
        rs = build(RedirectConfig(**kwargs))
        for family, tables in ((4, rs.v4), (6, rs.v6)):
            for table in tables:
                specs = [r.spec for r in table.rules]
                encoded = xtenc.encode_specs(specs, family)
                declined = [s for s, e in zip(specs, encoded, strict=True) if e is None]
                assert not declined, (family, table.name, declined)


def test_backend_still_rejects_bad_tokens_with_python_errors():
    iptc._ENCODED.clear()
    table = Table("nat", ("ISTIO_OUTPUT",), (
        Rule("ISTIO_OUTPUT", ("-p", "tcp", "--dport", "15008", "-j", "RETURN")),
        Rule("ISTIO_OUTPUT", ("-p", "tcp", "--dport", "70000", "-j", "RETURN")),
    ))
    with pytest.raises(xt.XtParseError, match="70000"):
        iptc._desired(table, 4)


def test_backend_entries_and_identities_match_python_path():
    iptc._ENCODED.clear()
    rs = build(RedirectConfig(interception_mode="TPROXY", enable_ipv6=True, redirect_dns=True))
    for family, tables in ((4, rs.v4), (6, rs.v6)):
        for table in tables:
            for chain, ident, entry, _, rule in iptc._desired(table, family, for_check=True):
                ref = _python(rule.spec, family)
                assert (entry, ident) == ref, (family, chain, rule.spec)
