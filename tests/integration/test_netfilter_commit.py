"""Commit semantics of every backend on a real kernel: idempotent, replacing, atomic,
precise ``check``, ``remove`` of only what is ours, bounded EAGAIN retry, no node-wide lock."""

from __future__ import annotations

import fcntl
import threading

import pytest
from nf_goldens import save_blocks

from istio_cni import netfilter
from istio_cni.errors import NetfilterError
from istio_cni.netfilter import iptc as iptc_mod
from istio_cni.rules.builder import build
from istio_cni.rules.config import RedirectConfig
from istio_cni.rules.model import Rule
from istio_cni.tools import netns as nsutil

BACKENDS = ["iptc", "nft", "restore-legacy", "restore-nft"]
LEGACY = {"iptc", "restore-legacy"}


def cfg(**kw) -> RedirectConfig:
    base = dict(inbound_ports_include="*", outbound_ip_ranges_include="*", enable_ipv6=True)
    base.update(kw)
    return RedirectConfig(**base)


def state(ns: str, backend: str) -> str:
    """Everything netfilter holds in ``ns`` for the backend's subsystem, normalised: no
    comment lines, no table that holds nothing (libiptc instantiates empty tables)."""
    if backend == "nft":
        return _nft_state(nsutil.exec_in(ns, "nft", "list", "ruleset", check=True).stdout)
    variant = "legacy" if backend in LEGACY else "nft"
    text = []
    for tool in (f"iptables-{variant}-save", f"ip6tables-{variant}-save"):
        blocks = save_blocks(nsutil.exec_in(ns, tool, check=True).stdout)
        for name in sorted(blocks):
            # iptables-nft lists chains in creation order; a roll-back recreates them
            # (stable sort by chain: the order within a chain is kept)
            body = [blocks[name][0]] + sorted(ln for ln in blocks[name][1:] if ln.startswith(":")) + sorted(
                (ln for ln in blocks[name][1:] if not ln.startswith(":")), key=lambda ln: ln.split()[:2])
            if any(ln.startswith("-A") or (ln.startswith(":") and " - " in ln) for ln in body):
                text.append(tool + "\n" + "\n".join(body))
    return "\n".join(text)


def _nft_state(listing: str) -> str:
    """Tables and chains sorted (a roll-back recreates a table: listing order changes); our digest
    comment and empty accept-policy base chains (iptables-nft leaves them, as x_tables leaves
    empty tables) dropped, and tables left empty by that dropped."""
    tables, cur, chain = [], None, None
    for ln in listing.splitlines():
        if 'comment "istio-cni' in ln or not ln.strip():
            continue
        if ln.startswith("table "):
            cur = [ln, []]
            tables.append(cur)
        elif ln.strip().startswith("chain "):
            chain = [ln]
            cur[1].append(chain)
        elif ln == "\t}":
            chain = None
        elif ln != "}" and chain is not None:
            chain.append(ln)
    out = []
    for head, chains in tables:
        kept = ["\n".join(c) for c in chains
                if not (len(c) == 2 and c[1].strip().endswith("policy accept;"))]
        if kept:
            out.append(head + "\n" + "\n".join(sorted(kept)))
    return "\n".join(sorted(out))


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


CHANGES = {
    # DNS capture (raw table, ISTIO_OUTPUT_DNS), drop-invalid, TPROXY marks -> plain REDIRECT
    "tproxy-dns-to-redirect": (dict(redirect_dns=True, dns_servers_v4="169.254.0.53",
                                    drop_invalid=True, interception_mode="TPROXY",
                                    exclude_interfaces="eth9"),
                               dict(outbound_ports_exclude="9090")),
    # IPv6 switched off: our ip6tables rules / ip6 parts must go
    "ipv6-off": (dict(), dict(enable_ipv6=False)),
    "redirect-to-tproxy": (dict(reroute_virtual_interfaces="eth7"), dict(interception_mode="TPROXY")),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_different_rule_set_replaces_ours(backend, change, netns):
    old_kw, new_kw = CHANGES[change]
    old, new = build(cfg(**old_kw)), build(cfg(**new_kw))
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


def _with_rejected_rule(rs, family: int = 4):
    """``rs`` plus, in the last table of ``family``, a rule the kernel refuses only at commit
    time (REDIRECT is a NAT target, legal in nat PREROUTING/OUTPUT, not in POSTROUTING)."""
    tables = rs.v4 if family == 4 else rs.v6
    nat = next(t for t in tables if t.name == "nat")
    bad = nat.replace(rules=nat.rules + (Rule("POSTROUTING", ("-p", "tcp", "-j", "REDIRECT",
                                                                "--to-ports", "1")),))
    tables = tuple(t for t in tables if t.name != "nat") + (bad,)
    # nftables: a NAT statement in a filter-type chain passes nft's checks, the kernel
    # refuses it (EOPNOTSUPP) while processing the batch.
    nft = tuple(t.replace(statements=t.statements + (
        f"add rule inet {t.name} prerouting tcp dport 1 counter redirect to :1",))
        if t.name == "istio-proxy-mangle" else t for t in rs.nft)
    assert nft != rs.nft
    return rs.replace(nft=nft, **{"v4" if family == 4 else "v6": tables})


# The nftables form is one inet transaction: there is no per-family step to fail.
FAILURES = [(b, f) for b in BACKENDS for f in (4, 6) if not (b == "nft" and f == 6)]


@pytest.mark.parametrize("backend, family", FAILURES)
def test_failed_commit_leaves_netns_as_before(backend, family, netns):
    """The failing table comes last: mangle (and, for IPv6, every IPv4 table) was already
    written when the kernel refuses it, so this proves the roll-back."""
    ns = netns("fail")
    foreign_rule(ns, backend)
    good = build(cfg(outbound_ports_exclude="9090"))
    netfilter.apply(nsutil.path(ns), good, backend)
    before = state(ns, backend)
    bad = _with_rejected_rule(build(cfg(interception_mode="TPROXY")), family)
    tables = bad.v4 if family == 4 else bad.v6
    assert [t.name for t in tables][-1] == "nat" and len(tables) > 1
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


@pytest.mark.parametrize("backend", ["iptc", "nft"])
def test_parallel_commits_into_many_netns(backend, netns):
    """Threads of one process (the agent's shape): each enters its own netns; the backends
    serialise their library calls, every netns ends up with exactly its rules."""
    names = [netns(f"par{i}") for i in range(8)]
    rs = build(cfg(interception_mode="TPROXY"))
    errors = []

    def work(name):
        try:
            netfilter.apply(nsutil.path(name), rs, backend, long_lived=True)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for name in names:
        assert netfilter.check(nsutil.path(name), rs, backend) == []


def test_nft_retries_when_the_ruleset_changed_under_it(netns, monkeypatch):
    from istio_cni.netfilter import nft as nft_mod

    ns = netns("nftrace")
    real_run = nft_mod.Nft.run
    failures = []

    def flaky_run(self, text, what):
        if what == "commit" and not failures:  # as libnftables reports a stale batch
            failures.append(1)
            raise NetfilterError("libnftables commit failed", "Resource temporarily unavailable")
        return real_run(self, text, what)

    monkeypatch.setattr(nft_mod.Nft, "run", flaky_run)
    rs = build(cfg())
    netfilter.apply(nsutil.path(ns), rs, "nft")
    assert failures == [1]
    assert netfilter.check(nsutil.path(ns), rs, "nft") == []
