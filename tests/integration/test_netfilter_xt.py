"""Token parser, normaliser and entry encoder (no netns needed, but lives with its peers).

Every rule of every upstream golden must parse and encode; bad tokens fail naming the
token; ``iptables-save``'s own spelling of a rule parses to the same value as upstream's.
"""

from __future__ import annotations

import pytest
from nf_goldens import iptables_cases, iptables_tables

from istio_cni.netfilter import xt, xtenc

# The owner-group goldens name groups this machine may not have; iptables resolves them
# on the node, so the test gives them ids.
TEST_GROUPS = {"java": 4242, "ftp": 4343}


def names(kind, name):
    if name in TEST_GROUPS:
        return TEST_GROUPS[name]
    return xt.system_names(kind, name)


def test_every_golden_rule_parses_and_encodes(conformance):
    cases = iptables_cases(conformance)
    assert len(cases) >= 27
    seen_targets, seen_matches, n = set(), set(), 0
    for case in cases:
        v4, v6 = iptables_tables(conformance / "istio-iptables" / "golden" / f"{case}.golden")
        for family, tables in ((4, v4), (6, v6)):
            for table in tables:
                for rule in table.rules:
                    parsed = xt.parse(rule.spec, family, names)
                    entry = xtenc.encode(parsed)
                    assert len(entry) % 8 == 0, (case, rule)
                    seen_targets.add(parsed.target[0].split("_")[0])
                    seen_matches.update(m for m, _ in parsed.matches)
                    n += 1
    golden = conformance / "istio-iptables" / "golden"
    assert n == sum(1 for c in cases for line in (golden / f"{c}.golden").read_text().splitlines()
                    if line.startswith(("-A ", "-I ")))
    assert seen_targets >= {"RETURN", "ACCEPT", "DROP", "REDIRECT", "TPROXY", "MARK", "CONNMARK",
                            "CT", "ISTIO"}
    assert seen_matches >= {"tcp", "udp", "owner", "multiport", "conntrack", "mark", "connmark"}


@pytest.mark.parametrize("spec, bad", [
    ("-p tcp --frobnicate 1 -j RETURN", "--frobnicate"),
    ("-m nosuchmatch -j RETURN", "nosuchmatch"),
    ("-p tcp -j REDIRECT --to-nowhere 1", "--to-nowhere"),
    ("-p carrier-pigeon -j RETURN", "carrier-pigeon"),
    ("-d 300.1.1.1/32 -j RETURN", "300.1.1.1/32"),
    ("-d 10.0.0.0/33 -j RETURN", "10.0.0.0/33"),
    ("-p tcp --dport 70000 -j RETURN", "70000"),
    ("-m conntrack --ctstate SLEEPY -j RETURN", "SLEEPY"),
    ("-p tcp --dport 1", "no target"),
    ("-m owner --gid-owner no-such-group-here -j RETURN", "no-such-group-here"),
])
def test_bad_input_names_the_bad_thing(spec, bad):
    with pytest.raises(xt.XtParseError, match=bad.replace(".", r"\.")):
        xt.parse(spec.split(), 4)


@pytest.mark.parametrize("upstream, saved, family", [
    ("-p tcp --dport 15008 -j RETURN", "-p tcp -m tcp --dport 15008 -j RETURN", 4),
    ("-o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
     "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT", 4),
    ("-j MARK --set-mark 1337", "-j MARK --set-xmark 0x539/0xffffffff", 4),
    ("-p tcp -m mark --mark 1337 -j CONNMARK --save-mark",
     "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff", 4),
    ("! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006",
     "! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x539/0xffffffff", 6),
    ("-p udp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-port 15053",
     "-d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053", 4),
    ("-d 10.1.2.3/8 -j RETURN", "-d 10.0.0.0/8 -j RETURN", 4),
])
def test_save_spelling_normalises_to_upstream_spelling(upstream, saved, family):
    assert xt.parse(upstream.split(), family) == xt.parse(saved.split(), family)


def test_normaliser_still_tells_different_rules_apart():
    a = xt.parse("-p tcp --dport 15008 -j RETURN".split())
    for other in ("-p tcp ! --dport 15008 -j RETURN", "-p udp --dport 15008 -j RETURN",
                  "-p tcp --sport 15008 -j RETURN", "-p tcp --dport 15009 -j RETURN",
                  "-p tcp --dport 15008 -j ACCEPT"):
        assert xt.parse(other.split()) != a, other


def test_entry_layout_follows_x_tables_rules():
    rule = xt.parse("-o lo -p tcp --dport 80 -j REDIRECT --to-ports 15001".split())
    entry = xtenc.encode(rule)
    ip, matches, target = xtenc.encode_parts(rule)
    assert entry[88:90] == (112 + len(matches)).to_bytes(2, "little")  # target_offset
    assert entry[90:92] == len(entry).to_bytes(2, "little")  # next_offset
    assert ip[32:35] == b"lo\0" and ip[64:68] == b"\xff\xff\xff\0"  # outiface mask: strlen("lo") + 1 bytes
    (name, rev, payload), = xtenc.split_exts(matches)
    assert (name, payload[4:8]) == ("tcp", (80).to_bytes(2, "little") * 2)  # host order
    (tname, trev, tpayload), = xtenc.split_exts(target)
    assert tname == "REDIRECT" and (15001).to_bytes(2, "big") in tpayload  # network order
    jump = xtenc.encode(xt.parse("-j ISTIO_OUTPUT".split()))
    assert len(jump) - 112 == 40  # the standard target is exactly 40 bytes


def test_ipv6_entries_flag_the_protocol():
    entry = xtenc.encode(xt.parse("-p tcp -j RETURN".split(), 6))
    assert entry[128:130] == (6).to_bytes(2, "little")
    assert entry[131] & 0x01  # IP6T_F_PROTO


def test_save_parser_keeps_foreign_rules_it_cannot_parse():
    from istio_cni.netfilter.restore import parse_save

    text = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -m comment --comment "kube rule" -j KUBE-SERVICES
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -o eth3 -j RETURN
-A ISTIO_OUTPUT -p tcp -m tcp --dport 15008 -j RETURN
COMMIT
"""
    nat = parse_save(text, 4)["nat"]
    assert nat["chains"] == ["PREROUTING", "OUTPUT", "ISTIO_OUTPUT"]
    foreign, jump, nic = nat["rules"]["OUTPUT"]
    assert isinstance(foreign[0], str) and foreign[1:] == ("KUBE-SERVICES", False)
    assert jump[1:] == ("ISTIO_OUTPUT", False)
    assert nic[1:] == ("RETURN", True)  # upstream's exclude-interface shape: ours
    assert nat["rules"]["ISTIO_OUTPUT"][0][0] == xt.parse("-p tcp --dport 15008 -j RETURN".split())


def test_describe_is_readable():
    r = xt.parse("! -d 127.0.0.1/32 -o lo -p tcp --dport 53 -j RETURN".split())
    assert xt.describe(r).startswith("! -d 127.0.0.1/32 -o lo -p tcp -m tcp")
