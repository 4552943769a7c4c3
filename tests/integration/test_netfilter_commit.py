"""Commit semantics of every backend on a real kernel: idempotent, replacing, atomic,
precise ``check``, ``remove`` of only what is ours, bounded EAGAIN retry, no node-wide lock."""

from __future__ import annotations

import fcntl
import threading

import pytest

from istio_cni import netfilter
from istio_cni.devtools import netns as nsutil
from istio_cni.errors import NetfilterError
from istio_cni.netfilter import iptc as iptc_mod
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.rules.model import Rule

BACKENDS = ["iptc", "nft", "restore-legacy", "restore-nft"]
LEGACY = {"iptc", "restore-legacy"}


def cfg(**kw) -> RedirectConfig:
    base = dict(inbound_ports_include="*", outbound_ip_ranges_include="*", enable_ipv6=True)
    base.update(kw)
    return RedirectConfig(**base)


def state(ns: str, backend: str) -> str:
    """Everything netfilter holds in ``ns`` for the backend's subsystem, normalised: no
    comment lines, no table that holds nothing (libiptc instantiates empty tables)."""
    if backend not in LEGACY:
        out = nsutil.exec_in(ns, "nft", "list", "ruleset", check=True).stdout
        return "\n".join(ln for ln in out.splitlines() if 'comment "istio-cni' not in ln)
    text = []
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        blocks, cur = {}, None
        for line in nsutil.exec_in(ns, tool, check=True).stdout.splitlines():
            if line.startswith("#"):
                continue
            if line.startswith("*"):
                cur = line
                blocks[cur] = []
            blocks[cur].append(line)
        for name in sorted(blocks):
            body = blocks[name]
            if any(ln.startswith("-A") or (ln.startswith(":") and " - " in ln) for ln in body):
                text.append(tool + "\n" + "\n".join(body))
    return "\n".join(text)


def foreign_rule(ns: str, backend: str) -> None:
    """Someone else's rule in a built-in chain and their own chain, in our subsystem."""
    if backend == "nft":
        nsutil.exec_in(ns, "nft", "-f", "-", check=True, input=(
            "add table inet foreign\nadd chain inet foreign out { type nat hook output priority 0 ; }\n"
            "add rule inet foreign out tcp dport 7777 accept\n"))
        return
    tool = "iptables-nft" if backend == "restore-nft" else "iptables-legacy"
    nsutil.exec_in(ns, tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7777",
                   "-j", "ACCEPT", check=True)
    nsutil.exec_in(ns, tool, "-t", "nat", "-N", "FOREIGN", check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_commit_changes_nothing(backend, netns):
    ns = netns("idem")
    rs = build(cfg(interception_mode="TPROXY"))
    netfilter.apply(nsutil.path(ns), rs, backend)
    first = state(ns, backend)
    netfilter.apply(nsutil.path(ns), rs, backend)
    assert state(ns, backend) == first
    assert netfilter.check(nsutil.path(ns), rs, backend) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_rule_set_replaces_ours(backend, netns):
    old = build(cfg(redirect_dns=True, dns_servers_v4="169.254.0.53", drop_invalid=True,
                    interception_mode="TPROXY"))
    new = build(cfg(outbound_ports_exclude="9090"))
    replaced, fresh = netns("repl"), netns("fresh")
    netfilter.apply(nsutil.path(replaced), old, backend)
    netfilter.apply(nsutil.path(replaced), new, backend)
    netfilter.apply(nsutil.path(fresh), new, backend)
    assert state(replaced, backend) == state(fresh, backend)
    assert netfilter.check(nsutil.path(replaced), new, backend) == []
    assert netfilter.check(nsutil.path(replaced), old, backend) != []


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_rules_survive_commit_and_remove(backend, netns):
    ns = netns("foreign")
    foreign_rule(ns, backend)
    before = state(ns, backend)
    rs = build(cfg(interception_mode="TPROXY"))
    netfilter.apply(nsutil.path(ns), rs, backend)
    assert netfilter.check(nsutil.path(ns), rs, backend) == []
    assert "7777" in state(ns, backend)
    netfilter.remove(nsutil.path(ns), backend, rs)
    assert state(ns, backend) == before
    assert nsutil.exec_in(ns, "ip", "rule", "list").stdout.count("lookup 133") == 0


@pytest.mark.parametrize("backend", ["iptc", "restore-legacy"])
def test_check_names_the_missing_rule(backend, netns):
    ns = netns("check")
    rs = build(cfg())
    netfilter.apply(nsutil.path(ns), rs, backend)
    nsutil.exec_in(ns, "iptables-legacy", "-t", "nat", "-D", "ISTIO_OUTPUT", "-m", "owner",
                   "--uid-owner", "1337", "-j", "RETURN", check=True)
    assert netfilter.check(nsutil.path(ns), rs, backend) == [
        "IPv4 nat ISTIO_OUTPUT: missing rule: -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"]
    nsutil.exec_in(ns, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_REDIRECT",
                   check=True)
    diffs = netfilter.check(nsutil.path(ns), rs, backend)
    assert "IPv4 nat OUTPUT: unexpected rule #2 (target ISTIO_REDIRECT)" in diffs


def test_nft_check_reports_changed_chain(netns):
    ns = netns("nftcheck")
    rs = build(cfg())
    netfilter.apply(nsutil.path(ns), rs, "nft")
    nsutil.exec_in(ns, "nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-redirect", check=True)
    assert netfilter.check(nsutil.path(ns), rs, "nft") == [
        "inet istio-proxy-nat: chain istio-redirect has 0 rules, expected 1"]


def _with_rejected_rule(rs):
    """``rs`` plus, in its last IPv4 table, a rule the kernel refuses only at commit time
    (REDIRECT is a NAT target, legal in nat PREROUTING/OUTPUT, not in POSTROUTING)."""
    nat = next(t for t in rs.v4 if t.name == "nat")
    bad = nat.replace(rules=nat.rules + (Rule("POSTROUTING", ("-p", "tcp", "-j", "REDIRECT",
                                                                "--to-ports", "1")),))
    v4 = tuple(t for t in rs.v4 if t.name != "nat") + (bad,)
    nft = rs.nft[:-1] + (rs.nft[-1].replace(statements=rs.nft[-1].statements + (
        f"add rule inet {rs.nft[-1].name} prerouting tcp dport 1 counter tproxy ip to :1",)),)
    return rs.replace(v4=v4, nft=nft)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_commit_leaves_netns_as_before(backend, netns):
    ns = netns("fail")
    foreign_rule(ns, backend)
    good = build(cfg(outbound_ports_exclude="9090"))
    netfilter.apply(nsutil.path(ns), good, backend)
    before = state(ns, backend)
    bad = _with_rejected_rule(build(cfg(interception_mode="TPROXY")))
    assert [t.name for t in bad.v4][-1] == "nat" and len(bad.v4) > 1  # fails after mangle
    with pytest.raises(NetfilterError):
        netfilter.apply(nsutil.path(ns), bad, backend)
    assert state(ns, backend) == before
    assert netfilter.check(nsutil.path(ns), good, backend) == []


def test_iptc_retries_when_another_writer_races(netns, monkeypatch):
    ns = netns("eagain")
    real_commit = iptc_mod.Handle.commit
    raced = []

    def racing_commit(self):
        if not raced:  # a concurrent writer changes the table between our init and commit
            raced.append(1)
            import subprocess

            subprocess.run(["iptables-legacy", "-t", self.table, "-A", "OUTPUT", "-p", "tcp",
                            "--dport", "7777", "-j", "ACCEPT"], check=True, timeout=20)
        return real_commit(self)

    monkeypatch.setattr(iptc_mod.Handle, "commit", racing_commit)
    rs = build(cfg())
    netfilter.apply(nsutil.path(ns), rs, "iptc")
    assert raced
    assert netfilter.check(nsutil.path(ns), rs, "iptc") == []
    assert "--dport 7777 -j ACCEPT" in state(ns, "iptc")


def test_iptc_gives_up_after_bounded_retries(netns, monkeypatch):
    ns = netns("eagain2")
    calls = []

    def always_stale(self):
        calls.append(1)
        import subprocess

        subprocess.run(["iptables-legacy", "-t", self.table, "-A", "OUTPUT", "-j", "ACCEPT"],
                       check=True, timeout=20)
        return iptc_mod.Handle.__dict__["_real_commit"](self)

    monkeypatch.setattr(iptc_mod.Handle, "_real_commit", iptc_mod.Handle.commit, raising=False)
    monkeypatch.setattr(iptc_mod.Handle, "commit", always_stale)
    with pytest.raises(NetfilterError) as e:
        netfilter.apply(nsutil.path(ns), build(cfg()), "iptc")
    assert e.value.errno == 11 and len(calls) == iptc_mod.RETRIES


@pytest.mark.parametrize("backend", ["iptc", "restore-legacy"])
def test_commit_ignores_the_xtables_lock(backend, netns, monkeypatch, tmp_path):
    """A held xtables lock (here a private one, XTABLES_LOCKFILE, so other users of the
    machine are not disturbed) does not stop or delay our commit."""
    lock = tmp_path / "xtables.lock"
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock))
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        ns = netns("lock")
        rs = build(cfg())
        netfilter.apply(nsutil.path(ns), rs, backend)
        assert netfilter.check(nsutil.path(ns), rs, backend) == []


def test_parallel_commits_into_many_netns(netns):
    names = [netns(f"par{i}") for i in range(8)]
    rs = build(cfg(interception_mode="TPROXY"))
    errors = []

    def work(name):
        try:
            netfilter.apply(nsutil.path(name), rs, "iptc")
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for name in names:
        assert netfilter.check(nsutil.path(name), rs, "iptc") == []
