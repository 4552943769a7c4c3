"""Parity with upstream istio-nftables: every golden transaction, rendered from our config.

The goldens (../shared/conformance/istio-nftables/golden/<case>.golden) hold the ``nft -f``
transaction upstream's configurator builds for one configuration; the configurations come
from the README's case table (tests/unit/rules_cases.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rules_cases import NFTABLES_CASES, config_for  # noqa: E402

from istio_cni.rules.model import NftTable, RuleSet  # noqa: E402
from istio_cni.rules.nft_builder import build_nft  # noqa: E402

PROBES = ("iptables-save", "ip6tables-save")


def _normalise(text: str) -> list[str]:
    """Lines without trailing whitespace, blank lines and upstream's probe commands dropped."""
    lines = (line.rstrip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(PROBES)]


def test_case_table_covers_every_golden(conformance):
    stems = {p.name[: -len(".golden")] for p in (conformance / "istio-nftables/golden").glob("*.golden")}
    assert stems == set(NFTABLES_CASES)


@pytest.mark.parametrize("case", sorted(NFTABLES_CASES))
def test_transaction_matches_upstream_golden(case, conformance):
    golden = (conformance / "istio-nftables/golden" / f"{case}.golden").read_text()
    tables = build_nft(config_for(case))
    assert _normalise(RuleSet(nft=tables).nft_text()) == _normalise(golden)


def test_tables_only_exist_when_they_hold_rules():
    tables = build_nft(config_for("empty"))
    assert [t.name for t in tables] == ["istio-proxy-nat"]
    assert [c.name for c in tables[0].chains] == [
        "output", "istio-inbound", "istio-redirect", "istio-in-redirect", "istio-output"
    ]


def test_every_statement_addresses_its_own_table():
    for case in NFTABLES_CASES:
        for table in build_nft(config_for(case)):
            assert isinstance(table, NftTable)
            for stmt in table.statements:
                verb = "insert rule" if stmt.startswith("insert") else "add rule"
                assert stmt.startswith(f"{verb} inet {table.name} "), (case, stmt)
                chain = stmt.split()[4]
                assert chain in {c.name for c in table.chains}, (case, stmt)


def test_insert_past_the_end_becomes_append():
    # Two reroute interfaces: the first insert at index 0 lands in an empty prerouting chain
    # (nft refuses that), the second goes in front of it.
    nat = build_nft(config_for("kube-virt-interfaces"))[0]
    pre = [s for s in nat.statements if " prerouting " in s]
    assert pre[0] == "add rule inet istio-proxy-nat prerouting iifname eth1 counter return"
    assert pre[1] == "insert rule inet istio-proxy-nat prerouting index 0 iifname eth2 counter return"


def test_ipv6_rules_only_with_ipv6_enabled():
    from istio_cni.rules.config import RedirectConfig

    on = RuleSet(nft=build_nft(RedirectConfig(enable_ipv6=True, interception_mode="TPROXY",
                                              inbound_ports_include="*"))).nft_text()
    off = RuleSet(nft=build_nft(RedirectConfig(interception_mode="TPROXY",
                                               inbound_ports_include="*"))).nft_text()
    assert "ip6 " in on and "::6/128" in on
    assert "ip6 " not in off


def test_capture_all_dns_matches_port_53_without_servers():
    # The CNI plugin's DNS mode (ISTIO_META_DNS_CAPTURE): no resolv.conf servers are known.
    from istio_cni.rules.config import RedirectConfig

    text = RuleSet(nft=build_nft(RedirectConfig(redirect_dns=True, capture_all_dns=True))).nft_text()
    assert ("add rule inet istio-proxy-nat istio-output-dns meta l4proto tcp tcp dport 53 counter redirect to :15053"
            in text)
    assert "add rule inet istio-proxy-nat istio-output-dns udp dport 53 counter redirect to :15053" in text
    assert "add rule inet istio-proxy-raw istio-output-dns udp dport 53 counter ct zone set 2" in text
    assert "add rule inet istio-proxy-raw istio-inbound udp sport 53 counter ct zone set 1" in text
    assert "add rule inet istio-proxy-raw prerouting counter jump istio-inbound" in text


def test_empty_owner_group_include_captures_nobody():
    from istio_cni.rules.config import RedirectConfig

    nat = build_nft(RedirectConfig(owner_groups_include=""))[0]
    assert "add rule inet istio-proxy-nat istio-output counter return" in nat.statements


@pytest.mark.parametrize("include", ["::1/128", "127.0.0.0/8"])
def test_explicit_loopback_include_keeps_app_loopback_traffic_captured(include):
    # Including a loopback range means "capture my lo traffic too": the per-owner
    # "oifname lo skuid != X return" escape hatch must disappear (upstream HasLoopBackIP).
    from istio_cni.rules.config import RedirectConfig

    text = RuleSet(nft=build_nft(RedirectConfig(outbound_ip_ranges_include=include,
                                                enable_ipv6=True))).nft_text()
    assert "oifname lo skuid != 1337" not in text and "oifname lo skgid != 1337" not in text
    plain = RuleSet(nft=build_nft(RedirectConfig(outbound_ip_ranges_include="10.0.0.0/8",
                                                 enable_ipv6=True))).nft_text()
    assert "oifname lo skuid != 1337 counter return" in plain
