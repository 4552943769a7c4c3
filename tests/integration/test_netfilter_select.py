"""Backend choice per netns: override, legacy rules, nf_tables rules, default; detection is
side-effect free; dry-run renders instead of committing."""

from __future__ import annotations

import io

import pytest

from istio_cni import netfilter
from istio_cni._fastpath import Entered
from istio_cni.errors import NetfilterError
from istio_cni.netfilter.dryrun import DryRunBackend
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.tools import netns as nsutil


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


class _NoLegacyNat:
    """libiptc as on a kernel built without legacy x_tables NAT: ``iptc_init("nat")`` fails
    with ENOENT ("Table does not exist"); every other call is the real one."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def init(self, table: bytes):
        if table == b"nat":
            self.real.ffi.errno = 2
            return self.real.ffi.NULL
        return self.real.init(table)

    def error(self, what: str):
        return type(self.real).error(self, what)


@pytest.fixture
def no_legacy_nat(monkeypatch):
    from istio_cni.netfilter import iptc

    real = iptc._lib
    monkeypatch.setattr(iptc, "_lib", lambda family: _NoLegacyNat(real(family)))


def test_auto_commits_through_nft_when_legacy_nat_is_missing(netns, no_legacy_nat, log_lines):
    ns = netns("nonat")
    assert netfilter.apply(nsutil.path(ns), RS) == "nft"
    ruleset = nsutil.exec_in(ns, "nft", "list", "ruleset", check=True).stdout
    assert "table inet istio-proxy-nat" in ruleset and ":15001" in ruleset
    assert nsutil.exec_in(ns, "cat", "/proc/net/ip_tables_names").stdout == ""  # nothing legacy
    fallbacks = [ln for ln in log_lines() if ln["msg"].startswith("legacy x_tables unusable")]
    assert len(fallbacks) == 1
    assert fallbacks[0]["backend"] == "nft" and "init of table nat" in fallbacks[0]["reason"]
    # a later CHECK/ADD of the same netns finds the nf_tables rules and stays there
    assert netfilter.check(nsutil.path(ns), RS) == []


def test_explicit_iptc_without_legacy_nat_fails_closed(netns, no_legacy_nat, log_lines):
    ns = netns("nonat")
    with pytest.raises(NetfilterError, match="init of table nat"):
        netfilter.apply(nsutil.path(ns), RS, "iptc")
    assert nsutil.exec_in(ns, "nft", "list", "ruleset").stdout == ""
    assert not [ln for ln in log_lines() if ln["msg"].startswith("legacy x_tables unusable")]


def test_fallback_next_to_legacy_rules_then_check_passes(netns, no_legacy_nat, log_lines):
    # The netns already holds legacy filter rules (auto picks libiptc), but the kernel has no
    # legacy nat table: ADD commits through nf_tables and CHECK accepts the rules found there.
    ns = netns("nonat")
    nsutil.exec_in(ns, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT", check=True)
    assert choose_in(ns, rs=RS)[0] == "iptc"
    assert netfilter.apply(nsutil.path(ns), RS) == "nft"
    assert netfilter.check(nsutil.path(ns), RS) == []
    nsutil.exec_in(ns, "nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-output", check=True)
    assert netfilter.check(nsutil.path(ns), RS) != []  # incomplete in both subsystems: reported


def test_nf_tables_list_over_raw_netlink_matches_libnftables(netns):
    # detect.nft_tables (raw NFT_MSG_GETTABLE dump) must see what libnftables' "list tables"
    # sees: every family, the kernel's order, names up to nf_tables' 256-byte limit.
    from istio_cni.netfilter.detect import nft_tables
    from istio_cni.netfilter.nft import Nft, list_tables

    ns = netns("nflist")
    with Entered(nsutil.path(ns)):
        assert nft_tables() == []
    long_name = "t" * 200
    for family, name in (("inet", "a"), ("ip", "nat"), ("ip6", "b"), ("arp", "c"), ("bridge", "d"),
                         ("netdev", "e"), ("inet", long_name)):
        nsutil.exec_in(ns, "nft", "add", "table", family, name, check=True)
    with Entered(nsutil.path(ns)):
        raw = nft_tables()
        with Nft() as n:
            reference = list_tables(n)
    assert raw == reference
    assert {("ip", "nat"), ("bridge", "d"), ("inet", long_name)} <= set(raw) and len(raw) == 7


LIBIPTC_ONLY = """
import sys
from istio_cni import netfilter
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
print(netfilter.apply(sys.argv[1], build(RedirectConfig(outbound_ip_ranges_include="*"))))
maps = open("/proc/self/maps").read()
print("libnftables" in maps, "libip4tc" in maps, "istio_cni._nft" in sys.modules)
"""


def test_auto_libiptc_commit_never_loads_libnftables(netns):
    # The default commit into a fresh netns (auto -> libiptc) asks nf_tables for its tables
    # but must not map libnftables: that cost 0.9-2.9 ms and ~0.9 MiB RSS per plugin exec.
    import os
    import subprocess
    import sys

    ns = netns("iptconly")
    env = {k: v for k, v in os.environ.items() if k != netfilter.ENV}
    out = subprocess.run([sys.executable, "-c", LIBIPTC_ONLY, nsutil.path(ns)], capture_output=True, text=True,
                         timeout=60, env=env, check=True).stdout.split()
    assert out == ["iptc", "False", "True", "False"], out


class _DumpOnce:
    """A NETLINK_NETFILTER socket whose first ``n_interrupted`` table dumps come back
    flagged NLM_F_DUMP_INTR (a ruleset change during a multi-part dump)."""

    answers: list = []

    def __init__(self, protocol: int) -> None:
        self.protocol, self.interrupted = protocol, False

    def request(self, kind: int, flags: int, body: bytes) -> list:
        import struct

        _DumpOnce.answers.append(kind)
        self.interrupted = len(_DumpOnce.answers) <= _DumpOnce.n_interrupted
        name = b"t%d\0" % len(_DumpOnce.answers)
        attr = struct.pack("<HH", 4 + len(name), 1) + name
        return [(10 << 8, struct.pack("<BBH", 1, 0, 0) + attr)]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("n_interrupted,expected", [(0, [("inet", "t1")]), (2, [("inet", "t3")]), (3, None)])
def test_nf_tables_list_reads_again_after_an_interrupted_dump(monkeypatch, n_interrupted, expected):
    from istio_cni.netfilter import detect

    monkeypatch.setattr(detect, "Netlink", _DumpOnce)
    monkeypatch.setattr(_DumpOnce, "answers", [])
    monkeypatch.setattr(_DumpOnce, "n_interrupted", n_interrupted, raising=False)
    if expected is None:  # still changing after every try: libnftables' EINTR, a retryable failure
        with pytest.raises(NetfilterError, match="Interrupted system call"):
            detect.nft_tables()
    else:
        assert detect.nft_tables() == expected
