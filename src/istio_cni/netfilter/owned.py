"""What we own in a table, and how ``check`` compares it with what the kernel holds.

Ours: every chain named ``ISTIO_*`` (upstream istio-iptables' prefix) and, in the built-in
chains, the rules that jump to one of them or are identical to a rule of the rule set being
committed/checked. Anything else in a built-in chain (another CNI's rule, an admin's rule)
is foreign and never touched.

Comparison is generic over the rule identity: the libiptc backend compares entry bytes
(``xtenc.identity``), the restore backend parsed ``XtRule`` values from ``*-save`` output.
"""

from __future__ import annotations

PREFIX = "ISTIO_"


def is_our_chain(name: str) -> bool:
    return name.startswith(PREFIX)


def expected_order(desired: list) -> dict:
    """chain -> [(identity, text)] after applying appends/inserts in order (ours only)."""
    out: dict = {}
    for chain, ident, _entry, insert_at, text in desired:
        lst = out.setdefault(chain, [])
        item = (ident, text)
        if insert_at is None:
            lst.append(item)
        else:
            lst.insert(min(insert_at - 1, len(lst)), item)
    return out


def compare(where: str, table, desired: list, present: set, rules_of) -> list:
    """Differences between ``desired`` (see ``expected_order``) and the live table.

    ``rules_of(chain)`` yields [(identity, target label)] for a live chain.
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
        live = rules_of(chain)
        if not is_our_chain(chain):
            mine = ids.get(chain, set())
            live = [(i, lbl) for i, lbl in live if is_our_chain(lbl) or i in mine]
        diffs += _diff_chain(f"{where} {chain}", want, live)
    return diffs


def _diff_chain(where: str, want: list, live: list) -> list:
    want_ids = [i for i, _ in want]
    live_ids = [i for i, _ in live]
    if want_ids == live_ids:
        return []
    out = []
    for ident, text in want:
        if ident not in live_ids:
            out.append(f"{where}: missing rule: {text}")
    for n, (ident, label) in enumerate(live, 1):
        if ident not in want_ids:
            out.append(f"{where}: unexpected rule #{n} (target {label})")
    if not out:
        out.append(f"{where}: rules in wrong order or duplicated "
                   f"(expected {len(want_ids)}, found {len(live_ids)})")
    return out
