"""The 2019 design: one ``iptables-legacy`` exec per rule, driven by a bash script under nsenter."""

from __future__ import annotations

import shlex
from pathlib import Path

BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
TOOLS = {4: "iptables-legacy", 6: "ip6tables-legacy"}


def _calls(tables, tool: str) -> tuple[list[str], list[str]]:
    cleanup, setup = [], []
    for table in tables:
        t = shlex.quote(table.name)
        # As istio-iptables.sh did: drop our jumps from built-in chains, flush and delete our
        # chains (failures ignored: on a fresh netns none of it exists), then build anew.
        for rule in table.rules:
            if rule.chain in BUILTIN_CHAINS:
                spec = " ".join(shlex.quote(tok) for tok in rule.spec)
                cleanup.append(f"{tool} -t {t} -D {rule.chain} {spec} 2>/dev/null")
        for chain in table.chains:
            cleanup.append(f"{tool} -t {t} -F {chain} 2>/dev/null")
            cleanup.append(f"{tool} -t {t} -X {chain} 2>/dev/null")
        setup += [f"{tool} -t {t} -N {chain}" for chain in table.chains]
        for rule in table.rules:
            spec = " ".join(shlex.quote(tok) for tok in rule.spec)
            where = f"-A {rule.chain}" if rule.insert_at is None else f"-I {rule.chain} {rule.insert_at}"
            setup.append(f"{tool} -t {t} {where} {spec}".rstrip())
    return cleanup, setup


def render(ruleset) -> str:
    """The whole script for ``ruleset`` (v4 and, when present, v6)."""
    cleanup, setup = [], []
    for family in (4, 6):
        c, s = _calls(ruleset.v4 if family == 4 else ruleset.v6, TOOLS[family])
        cleanup += c
        setup += s
    if not setup:
        raise ValueError("the rule set is empty: nothing for the 2019 script to program")
    return "\n".join(["#!/bin/bash", "# generated: 2019 istio-iptables.sh equivalent",
                      *cleanup, "set -o errexit", *setup, ""])


def calls(ruleset) -> int:
    """How many iptables execs the script makes (cleanup + setup)."""
    return sum(1 for line in render(ruleset).splitlines() if line.startswith(("iptables", "ip6tables")))


def write(ruleset, directory: Path) -> Path:
    path = Path(directory) / "istio-iptables-2019.sh"
    path.write_text(render(ruleset))
    path.chmod(0o755)
    return path


def argv(script: Path, netns_path: str) -> list[str]:
    return ["/usr/bin/nsenter", f"--net={netns_path}", "/bin/bash", str(script)]
