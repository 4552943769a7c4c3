"""What we own in a table, and how ``check`` compares it with what the kernel holds.

Ours: every chain named ``ISTIO_*`` (upstream istio-iptables' prefix) and, in the built-in
chains, the rules that jump to one of them, are identical to a rule of the rule set being
committed/checked, or have the shape of a rule upstream puts in built-in chains without a
jump (``upstream_shape``: the exclude/virtual-interface RETURNs and TPROXY's mark rules), so
a rule set from an earlier config is replaced even where its rules did not jump to our
chains. Anything else in a built-in chain (another CNI's rule, an admin's rule) is foreign
and never touched. Limitation: a foreign rule of exactly such a shape (``-i eth9 -j RETURN``
alone in nat PREROUTING) would be taken for ours.

Comparison is generic over the rule identity: the libiptc backend compares entry bytes
(``xtenc.identity``), the restore backend parsed ``XtRule`` values from ``*-save`` output.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..rules.model import Table
    from .xt import XtRule

PREFIX = "ISTIO_"


def is_our_chain(name: str) -> bool:
    return name.startswith(PREFIX)


def upstream_shape(
    table: str,
    chain: str,
    iniface: str | None,
    outiface: str | None,
    proto: str | None,
    has_addr: bool,
    matches: tuple,
    target: str,
) -> bool:
    """True for the built-in-chain rules upstream istio-iptables writes that jump nowhere
    (every such rule in every upstream golden has one of these shapes)."""
    if table not in ("nat", "mangle"):
        return False
    if target == "RETURN" and not matches and not proto and not has_addr:
        return (chain == "PREROUTING" and bool(iniface) and not outiface) or (
            chain == "OUTPUT" and bool(outiface) and not iniface
        )
    if table != "mangle" or proto != "tcp":
        return False
    if target in ("MARK", "CONNMARK"):
        return matches in (("mark",), ("connmark",), ("owner",))
    return chain == "OUTPUT" and target == "RETURN" and outiface == "lo" and matches == ("mark",)


def xt_shape(table: str, chain: str, rule: XtRule | str) -> bool:
    """``upstream_shape`` for a parsed ``XtRule`` (None-safe for unparsed foreign text)."""
    if isinstance(rule, str):
        return False
    return upstream_shape(
        table,
        chain,
        rule.iniface and rule.iniface[0],
        rule.outiface and rule.outiface[0],
        rule.proto and rule.proto[0],
        bool(rule.src or rule.dst),
        tuple(m for m, _ in rule.matches),
        rule.target[0],
    )


def expected_order(desired: list) -> dict:
    """chain -> [(identity, Rule)] after applying appends/inserts in order (ours only)."""
    out: dict = {}
    for chain, ident, _entry, insert_at, rule in desired:
        lst = out.setdefault(chain, [])
        item = (ident, rule)
        if insert_at is None:
            lst.append(item)
        else:
            lst.insert(min(insert_at - 1, len(lst)), item)
    return out


def compare(where: str, table: Table, desired: list, present: set, rules_of: Callable[..., list]) -> list:
    """Differences between ``desired`` (see ``expected_order``) and the live table.

    ``rules_of(chain)`` yields [(identity, target label, upstream shape?)] for a live chain.
    """
    diffs = []
    for c in table.chains:
        if c not in present:
            diffs.append(f"{where}: chain {c} missing")
    for c in sorted(present):
        if is_our_chain(c) and c not in table.chains:
            diffs.append(f"{where}: unexpected chain {c}")
    expected = expected_order(desired)
    ids = {c: {i for i, _ in lst} for c, lst in expected.items()}
    for chain in sorted(set(expected) | {c for c in present if not is_our_chain(c)}):
        if chain not in present:
            if not is_our_chain(chain):
                diffs.append(f"{where}: built-in chain {chain} missing")
            continue
        want = expected.get(chain, [])
        live = [(i, lbl) for i, lbl, _ in rules_of(chain)]
        if not is_our_chain(chain):
            mine = ids.get(chain, set())
            live = [(i, lbl) for i, lbl, shape in rules_of(chain) if is_our_chain(lbl) or i in mine or shape]
        diffs += _diff_chain(f"{where} {chain}", want, live)
    return diffs


def _diff_chain(where: str, want: list, live: list) -> list:
    want_ids = [i for i, _ in want]
    live_ids = [i for i, _ in live]
    if want_ids == live_ids:
        return []
    out = []
    for ident, rule in want:
        if ident not in live_ids:
            out.append(f"{where}: missing rule: {rule.render()}")
    for n, (ident, label) in enumerate(live, 1):
        if ident not in want_ids:
            out.append(f"{where}: unexpected rule #{n} (target {label})")
    if not out:
        out.append(f"{where}: rules in wrong order or duplicated (expected {len(want_ids)}, found {len(live_ids)})")
    return out
