"""Today's upstream apply pipeline, as execs inside the pod netns (report section 4.3).

``VerifyIptablesState`` runs ``iptables-save`` (and ``ip6tables-save``), then one
``iptables-restore --noflush`` transaction per family with IPv6 only when there are v6 rules,
then the deferred final ``*-save`` dump. Upstream picks ``iptables-nft`` in a fresh netns (no
legacy rules there), so ``nft`` is the default variant. Left out: the per-candidate version and
no-op-rule probes of backend detection, so this is a lower bound of upstream's own cost.
"""

from __future__ import annotations

import shlex
from pathlib import Path

VARIANTS = ("nft", "legacy")


def render(ruleset, rules_dir: Path, variant: str = "nft") -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown iptables variant {variant!r}; want one of {VARIANTS}")
    rules_dir = Path(rules_dir)
    families = [f for f in (4, 6) if ruleset.restore_text(f)]
    if not families:
        raise ValueError("the rule set is empty: nothing for the restore pipeline to program")
    lines = ["#!/bin/sh", "# generated: upstream istio-iptables apply pipeline", "set -e"]
    tool = {4: f"iptables-{variant}", 6: f"ip6tables-{variant}"}
    for f in families:
        lines.append(f"{tool[f]}-save >/dev/null")
    for f in families:
        payload = rules_dir / f"rules.v{f}"
        payload.write_text(ruleset.restore_text(f))
        lines.append(f"{tool[f]}-restore --noflush < {shlex.quote(str(payload))}")
    for f in families:
        lines.append(f"{tool[f]}-save >/dev/null")
    return "\n".join(lines) + "\n"


def write(ruleset, directory: Path, variant: str = "nft") -> Path:
    path = Path(directory) / f"upstream-pipeline-{variant}.sh"
    path.write_text(render(ruleset, directory, variant))
    path.chmod(0o755)
    return path


def argv(script: Path, netns_path: str) -> list[str]:
    return ["/usr/bin/nsenter", f"--net={netns_path}", "/bin/sh", str(script)]
