"""Dry-run backend: writes what would be committed to a text stream, touches no kernel."""

from __future__ import annotations

from ..rules.model import RuleSet

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import TextIO


class DryRunBackend:
    """``sink`` is any text stream (never the plugin's stdout: that is the CNI protocol).

    ``nft=True`` renders the native-nftables transaction as well (when nft would be chosen).
    """

    name = "dry-run"

    def __init__(self, sink: TextIO, nft: bool = False) -> None:
        self.sink = sink
        self.nft = nft

    def commit(self, rs: RuleSet) -> None:
        self.sink.write(rs.restore_text(4))
        if rs.v6:
            self.sink.write(rs.restore_text(6))
        if self.nft and rs.nft:
            self.sink.write(rs.nft_text())
        for addr in rs.lo_addresses:
            self.sink.write(f"ip -6 addr add {addr} dev lo\n")
        for r in rs.routes:
            fam = "-6 " if r.family == 6 else ""
            self.sink.write(
                f"ip {fam}rule add fwmark {r.fwmark} lookup {r.table}\n"
                f"ip {fam}route add local default dev lo table {r.table}\n"
            )

    def check(self, rs: RuleSet) -> list:
        return []

    def remove(self, rs: RuleSet | None = None) -> None:
        self.sink.write("# remove: ISTIO_* chains and their jumps, inet istio-proxy-* tables\n")
