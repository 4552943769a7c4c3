"""Load upstream goldens (../shared/conformance) into the rule model for netfilter tests.

``istio-iptables/golden/<case>.golden`` holds the iptables-restore payload, then the
ip6tables-restore payload when IPv6 is on: the v6 part starts where a table name repeats.
``istio-nftables/golden/<case>.golden`` is one ``nft -f`` transaction of inet tables.
"""

from __future__ import annotations

from pathlib import Path

from istio_cni.rules.model import NftChain, NftTable, Rule, RuleSet, Table


def _rule(line: str) -> Rule:
    t = line.split()
    if t[0] == "-A":
        return Rule(t[1], tuple(t[2:]))
    return Rule(t[1], tuple(t[3:]), int(t[2]))


def iptables_tables(path: Path) -> tuple:
    """(v4 tables, v6 tables) of one golden."""
    tables = []
    cur = None
    for line in path.read_text().splitlines():
        if line.startswith("* "):
            cur = [line[2:], [], []]
        elif line.startswith("-N ") and cur:
            cur[1].append(line[3:])
        elif line.startswith(("-A ", "-I ")) and cur:
            cur[2].append(_rule(line))
        elif line == "COMMIT" and cur:
            tables.append(Table(cur[0], tuple(cur[1]), tuple(cur[2])))
            cur = None
    v4, v6, seen = [], [], set()
    for t in tables:
        if v6 or t.name in seen:
            v6.append(t)
        else:
            seen.add(t.name)
            v4.append(t)
    return tuple(v4), tuple(v6)


def iptables_ruleset(conformance: Path, case: str) -> RuleSet:
    v4, v6 = iptables_tables(conformance / "istio-iptables" / "golden" / f"{case}.golden")
    return RuleSet(v4=v4, v6=v6)


def nft_tables(path: Path) -> tuple:
    out = []
    name, chains, stmts = None, [], []

    def close():
        if name:
            out.append(NftTable(name, tuple(chains), tuple(stmts)))

    for line in path.read_text().splitlines():
        t = line.split()
        if not t:
            continue
        if t[:2] == ["add", "table"]:
            close()
            name, chains, stmts = t[3], [], []
        elif t[:2] == ["flush", "table"]:
            continue
        elif t[:2] == ["add", "chain"]:
            if "{" in t:
                i = t.index("type")
                chains.append(NftChain(t[4], t[i + 1], t[i + 3], int(t[i + 5])))
            else:
                chains.append(NftChain(t[4]))
        else:
            stmts.append(line)
    close()
    return tuple(out)


def nft_ruleset(conformance: Path, case: str) -> RuleSet:
    return RuleSet(nft=nft_tables(conformance / "istio-nftables" / "golden" / f"{case}.golden"))


def iptables_cases(conformance: Path) -> list:
    return sorted(p.stem for p in (conformance / "istio-iptables" / "golden").glob("*.golden"))


def save_blocks(save_text: str) -> dict:
    """``iptables-save`` output -> {"*table": [lines]}: comment lines (timestamps) dropped,
    so callers can order tables their own way (the kernel's order is not ours)."""
    blocks: dict = {}
    cur = None
    for line in save_text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = line
            blocks[cur] = []
        blocks[cur].append(line)
    return blocks
