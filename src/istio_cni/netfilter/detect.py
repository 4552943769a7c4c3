"""Which netfilter subsystem the current netns already uses (runs per ADD: keep it cheap).

No ``*-save`` exec. Legacy x_tables: ``/proc/thread-self/net/ip{,6}_tables_names`` lists the
tables that exist in this netns; only those are opened with ``iptc_init`` and their rules
counted (``iptc_init`` on a table that does not exist yet would instantiate it, so we never
do that here). nf_tables: one libnftables ``list tables``; any table counts, including
``ip nat`` made by iptables-nft.
"""

from __future__ import annotations

from .iptc import LOCK, Handle, _lib, live_tables


class Detected:
    __slots__ = ("legacy_rules", "nft_tables")

    def __init__(self, legacy_rules: int, nft_tables: list) -> None:
        self.legacy_rules = legacy_rules
        self.nft_tables = nft_tables


def legacy_rule_count() -> int:
    n = 0
    with LOCK:
        for family in (4, 6):
            for table in live_tables(family):
                h = Handle(_lib(family), table)
                try:
                    n += sum(len(h.rules(c)) for c in h.chains())
                finally:
                    h.close()
    return n


def nft_tables() -> list:
    from .nft import Nft, list_tables

    with Nft() as n:
        return list_tables(n)


def detect() -> Detected:
    return Detected(legacy_rule_count(), nft_tables())
