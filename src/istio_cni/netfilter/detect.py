"""Which netfilter subsystem the current netns already uses (runs per ADD: keep it cheap).

No ``*-save`` exec. Legacy x_tables: ``/proc/thread-self/net/ip{,6}_tables_names`` lists the
tables that exist in this netns; only those are opened with ``iptc_init`` and their rules
counted (``iptc_init`` on a table that does not exist yet would instantiate it, so we never
do that here). nf_tables: one NFT_MSG_GETTABLE dump over a raw NETLINK_NETFILTER socket
(what libnftables' ``list tables`` sends); any table counts, including ``ip nat`` made by
iptables-nft. Raw netlink rather than libnftables: the auto choice asks this on every ADD
into a fresh netns, and loading libnftables (``_nft``) for it cost 0.9-2.9 ms and ~0.9 MiB
of RSS per plugin exec that then committed through libiptc anyway.
"""

from __future__ import annotations

import _struct

from ..errors import NetfilterError
from .iptc import LOCK, Handle, _lib, live_tables
from .routes import F_DUMP, Netlink, _attrs

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFTA_TABLE_NAME = 1
DUMP_TRIES = 3
EINTR = 4
# nfgenmsg.nfgen_family -> the family word ``nft list tables`` prints
NFPROTO = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


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
    """[(family, name)] of every nf_tables table in the current netns, in the kernel's dump
    order (as ``nft list tables`` prints them)."""
    # struct nfgenmsg: family (NFPROTO_UNSPEC: all), version (NFNETLINK_V0), res_id (be16)
    body = _struct.pack("<BBH", 0, 0, 0)
    try:
        nl = Netlink(NETLINK_NETFILTER)
        try:
            for _ in range(DUMP_TRIES):  # a ruleset change during a multi-part dump: read again
                answer = nl.request(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, F_DUMP, body)
                if not nl.interrupted:
                    break
            else:
                raise OSError(EINTR, "Interrupted system call")  # what libnftables reports
        finally:
            nl.close()
    except OSError as e:
        raise NetfilterError("nf_tables table list failed", e.strerror or str(e), e.errno or 0) from None
    out = []
    for mtype, payload in answer:
        if mtype != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE or len(payload) < 4:
            continue
        name = _attrs(payload, 4).get(NFTA_TABLE_NAME)
        if name:
            out.append((NFPROTO.get(payload[0], str(payload[0])), name.rstrip(b"\0").decode(errors="replace")))
    return out


def detect() -> Detected:
    return Detected(legacy_rule_count(), nft_tables())
