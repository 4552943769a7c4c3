"""Backend choice per netns: override, legacy rules, nf_tables rules, default; detection is
side-effect free; dry-run renders instead of committing."""

from __future__ import annotations

import io

import pytest

from istio_cni import netfilter
from istio_cni._fastpath import Entered
from istio_cni.devtools import netns as nsutil
from istio_cni.errors import NetfilterError
from istio_cni.netfilter.dryrun import DryRunBackend
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(netfilter.ENV, raising=False)


def choose_in(ns: str, preferred: str = "auto", rs=None) -> tuple:
    with Entered(nsutil.path(ns)):
        return netfilter.choose(preferred, rs)


RS = build(RedirectConfig(outbound_ip_ranges_include="*"))
XT_ONLY = RS.replace(nft=())


def test_empty_netns_gets_the_default(netns):
    ns = netns("sel")
    assert choose_in(ns, rs=RS) == ("iptc", "netns holds no rules: default")


def test_detection_does_not_instantiate_legacy_tables(netns):
    ns = netns("sel")
    choose_in(ns, rs=RS)
    tables = nsutil.exec_in(ns, "cat", "/proc/net/ip_tables_names").stdout.split()
    assert tables == []


def test_legacy_rules_pick_libiptc(netns):
    ns = netns("sel")
    nsutil.exec_in(ns, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT", check=True)
    name, reason = choose_in(ns, rs=RS)
    assert name == "iptc" and "1 legacy" in reason


def test_iptables_nft_rules_pick_nft_or_restore_nft(netns):
    ns = netns("sel")
    nsutil.exec_in(ns, "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "ACCEPT", check=True)
    assert choose_in(ns, rs=RS)[0] == "nft"
    name, reason = choose_in(ns, rs=XT_ONLY)
    assert name == "restore-nft" and "ip nat" in reason


def test_configured_choice_and_env_override(netns, monkeypatch):
    ns = netns("sel")
    assert choose_in(ns, "restore-legacy", RS) == ("restore-legacy", "configured")
    monkeypatch.setenv(netfilter.ENV, "nft")
    assert choose_in(ns, "iptc", RS) == ("nft", f"{netfilter.ENV}=nft")


def test_restore_picks_its_variant_by_the_rules_present(netns):
    ns = netns("sel")
    assert choose_in(ns, "restore", RS)[0] == "restore-legacy"
    nsutil.exec_in(ns, "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "ACCEPT", check=True)
    assert choose_in(ns, "restore", RS)[0] == "restore-nft"


def test_unknown_backend_is_named(netns):
    ns = netns("sel")
    with pytest.raises(NetfilterError, match="'iptables-please'"):
        choose_in(ns, "iptables-please", RS)


def test_apply_auto_reuses_the_subsystem_already_in_use(netns):
    ns = netns("sel")
    nsutil.exec_in(ns, "nft", "add", "table", "inet", "someone-else", check=True)
    assert netfilter.apply(nsutil.path(ns), RS) == "nft"
    assert netfilter.check(nsutil.path(ns), RS) == []
    netfilter.remove(nsutil.path(ns))
    assert nsutil.exec_in(ns, "nft", "list", "tables").stdout.split() == ["table", "inet", "someone-else"]


def test_dry_run_renders_and_touches_nothing(netns):
    ns = netns("dry")
    rs = build(RedirectConfig(interception_mode="TPROXY", inbound_ports_include="*", enable_ipv6=True))
    sink = io.StringIO()
    with Entered(nsutil.path(ns)):
        DryRunBackend(sink, nft=True).commit(rs)
    text = sink.getvalue()
    assert text.startswith(rs.restore_text(4) + rs.restore_text(6) + rs.nft_text())
    assert "ip rule add fwmark 1337 lookup 133" in text
    assert nsutil.exec_in(ns, "cat", "/proc/net/ip_tables_names").stdout == ""
    assert nsutil.exec_in(ns, "nft", "list", "ruleset").stdout == ""
