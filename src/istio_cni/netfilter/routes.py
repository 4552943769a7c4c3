"""Addresses, TPROXY policy routing and the netns' own addresses over raw rtnetlink (no
pyroute2, no ``ip`` exec), as upstream's ``tools/common/tproxy.ConfigureRoutes`` does them:

1. each of ``RuleSet.lo_addresses``: ``ip -6 addr add ::6/128 dev lo`` (an existing one is
   fine, as upstream ignores "file exists");
2. for each ``PolicyRoute(family, fwmark, table)``: ``ip [-6] rule add fwmark M lookup T``
   and ``ip [-6] route add local default dev lo table T``.

Runs on a netlink socket opened inside the current (pod) netns. Adding is idempotent: the
route is sent with NLM_F_REPLACE; the rule is added only if a dump does not show it already
(like ``ip rule add`` without ``pref``, the kernel would otherwise add a duplicate at the next
free priority: NLM_F_EXCL only catches an identical priority).

``local_addresses`` lists the netns' addresses the way Go's ``net.InterfaceAddrs`` does
(one RTM_GETADDR dump of every family: the kernel answers IPv4 before IPv6); upstream
decides IPv6 from them (``redirect.ipv6_enabled``).
"""

from __future__ import annotations

import _socket
import _struct

from ..errors import NetfilterError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ..rules.model import PolicyRoute

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_DUMP, F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
F_REPLACE, F_EXCL, F_CREATE = 0x100, 0x200, 0x400
FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 10, 15, 16
RTA_OIF, RTA_TABLE = 4, 15
FR_ACT_TO_TBL = 1
RTN_LOCAL, RTPROT_BOOT, RT_SCOPE_HOST = 2, 3, 254
EEXIST, ENOENT, ESRCH = 17, 2, 3
AF = {4: 2, 6: 10}  # AF_INET, AF_INET6
FAMILY = {2: 4, 10: 6}


def _attr(kind: int, value: int) -> bytes:
    return _struct.pack("<HHI", 8, kind, value)


def _rule_msg(r: PolicyRoute) -> bytes:
    # struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
    hdr = _struct.pack("<BBBBBBBBI", AF[r.family], 0, 0, 0, r.table if r.table < 256 else 252, 0, 0, FR_ACT_TO_TBL, 0)
    return hdr + _attr(FRA_FWMARK, r.fwmark) + _attr(FRA_TABLE, r.table)


def _route_msg(r: PolicyRoute) -> bytes:
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    hdr = _struct.pack(
        "<BBBBBBBBI", AF[r.family], 0, 0, 0, r.table if r.table < 256 else 252, RTPROT_BOOT, RT_SCOPE_HOST, RTN_LOCAL, 0
    )
    return hdr + _attr(RTA_OIF, _socket.if_nametoindex("lo")) + _attr(RTA_TABLE, r.table)


class Netlink:
    """One netlink socket in the current netns (rtnetlink unless ``protocol`` says otherwise:
    ``detect.nft_tables`` dumps nf_tables' table list over NETLINK_NETFILTER with it)."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
        self.sock.settimeout(2.0)  # the kernel answers at once; never hang an ADD
        self.sock.bind((0, 0))
        self.seq = 0
        self.interrupted = False  # the last dump changed under us (NLM_F_DUMP_INTR): redo it

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list:
        """Send one message; return the payloads of the answer ([] for an ack)."""
        self.seq += 1
        msg = _struct.pack("<IHHII", 16 + len(body), kind, F_REQUEST | flags, self.seq, 0) + body
        self.sock.send(msg)
        self.interrupted = False
        out: list[tuple[int, bytes]] = []  # (message type, payload)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype, mflags, seq, _pid = _struct.unpack_from("<IHHII", data, off)
                payload = data[off + 16 : off + length]
                off += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mflags & F_DUMP_INTR:
                    self.interrupted = True
                if mtype == NLMSG_ERROR:
                    err = -_struct.unpack_from("<i", payload)[0]
                    if err:
                        raise OSError(err, _os_strerror(err))
                    return out
                if mtype == NLMSG_DONE:
                    return out
                out.append((mtype, payload))
            if not flags & F_DUMP and not flags & F_ACK:
                return out


def _os_strerror(err: int) -> str:
    import os

    return os.strerror(err)


def _attrs(payload: bytes, start: int) -> dict:
    out = {}
    off = start
    while off + 4 <= len(payload):
        length, kind = _struct.unpack_from("<HH", payload, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = payload[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def _u32(b: bytes | None) -> int | None:
    return _struct.unpack("<I", b[:4])[0] if b else None


def _split(text: str) -> tuple:
    """ "::6/128" -> (6, packed address, 128)."""
    addr, _, bits = text.partition("/")
    family = 6 if ":" in addr else 4
    packed = _socket.inet_pton(_socket.AF_INET6 if family == 6 else _socket.AF_INET, addr)
    return family, packed, int(bits or (128 if family == 6 else 32))


def _addr_msg(text: str) -> bytes:
    family, packed, bits = _split(text)
    # struct ifaddrmsg: family, prefixlen, flags, scope, index; then IFA_LOCAL + IFA_ADDRESS
    hdr = _struct.pack("<BBBBI", AF[family], bits, 0, 0, _socket.if_nametoindex("lo"))
    attr = _struct.pack("<HH", 4 + len(packed), IFA_LOCAL) + packed
    return hdr + attr + _struct.pack("<HH", 4 + len(packed), IFA_ADDRESS) + packed


def add_lo_addresses(nl: Netlink, addresses: Iterable[str]) -> None:
    for text in addresses:
        try:
            nl.request(RTM_NEWADDR, F_ACK | F_CREATE | F_EXCL, _addr_msg(text))
        except OSError as e:
            if e.errno != EEXIST:  # upstream ignores "file exists" too
                raise NetfilterError("address add on lo failed", f"{text}: {e.strerror}", e.errno or 0) from None


def program(routes: Sequence[PolicyRoute], lo_addresses: Sequence[str] = ()) -> None:
    """Upstream's order: the addresses on lo first, then each policy rule and its route."""
    if not routes and not lo_addresses:
        return
    nl = Netlink()
    try:
        add_lo_addresses(nl, lo_addresses)
        for r in routes:
            try:
                if (r.fwmark, r.table) not in _rules(nl, r.family):
                    nl.request(RTM_NEWRULE, F_ACK | F_CREATE | F_EXCL, _rule_msg(r))
            except OSError as e:
                if e.errno != EEXIST:
                    raise NetfilterError(
                        "policy rule add failed", f"fwmark {r.fwmark} lookup {r.table}: {e.strerror}", e.errno or 0
                    ) from e
            try:
                nl.request(RTM_NEWROUTE, F_ACK | F_CREATE | F_REPLACE, _route_msg(r))
            except OSError as e:
                raise NetfilterError("local route add failed", f"table {r.table}: {e.strerror}", e.errno or 0) from None
    finally:
        nl.close()


def _dump_body(family: int) -> bytes:
    return _struct.pack("<BBBBBBBBI", AF[family], 0, 0, 0, 0, 0, 0, 0, 0)


def _rules(nl: Netlink, family: int) -> set:
    """{(fwmark, table)} of the family's policy rules."""
    return {
        (_u32(a.get(FRA_FWMARK)), _u32(a.get(FRA_TABLE)))
        for _, p in nl.request(RTM_GETRULE, F_DUMP, _dump_body(family))
        for a in [_attrs(p, 12)]
    }


def _addresses(nl: Netlink, family: int = 0) -> list:
    """[(family, packed address, prefix length, ifindex)] in the kernel's dump order."""
    out = []
    body = _struct.pack("<BBBBI", family, 0, 0, 0, 0)
    for mtype, p in nl.request(RTM_GETADDR, F_DUMP, body):
        if mtype != RTM_NEWADDR or len(p) < 8:
            continue
        fam, bits, _flags, _scope, index = _struct.unpack_from("<BBBBI", p)
        if fam not in FAMILY:
            continue
        a = _attrs(p, 8)
        # Go's newAddr: IFA_LOCAL when present (point-to-point), else IFA_ADDRESS.
        packed = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if packed:
            out.append((FAMILY[fam], packed, bits, index))
    return out


def local_addresses() -> list:
    """The current netns' addresses as text (no prefix), every IPv4 one before any IPv6
    one, as Go's ``net.InterfaceAddrs`` returns them to upstream's getLocalIP."""
    nl = Netlink()
    try:
        return [_socket.inet_ntop(AF[fam], packed) for fam, packed, _bits, _ in _addresses(nl)]
    finally:
        nl.close()


def netns_addresses(netns_path: str) -> list:
    """``local_addresses`` of the netns at ``netns_path`` (entered and left on this thread)."""
    from .._fastpath import Entered

    with Entered(netns_path):
        return local_addresses()


def missing(routes: Sequence[PolicyRoute], lo_addresses: Sequence[str] = ()) -> list:
    """Descriptions of the addresses, policy rules and routes not present in the netns."""
    if not routes and not lo_addresses:
        return []
    nl = Netlink()
    try:
        out = []
        if lo_addresses:
            lo = _socket.if_nametoindex("lo")
            have = {(fam, packed, bits) for fam, packed, bits, index in _addresses(nl) if index == lo}
            out += [f"address {text} on lo missing" for text in lo_addresses if _split(text) not in have]
        for fam in sorted({r.family for r in routes}):
            rules = _rules(nl, fam)
            local = {
                _u32(a.get(RTA_TABLE))
                for _, p in nl.request(RTM_GETROUTE, F_DUMP, _dump_body(fam))
                if p[7] == RTN_LOCAL and p[1] == 0
                for a in [_attrs(p, 12)]
            }
            for r in routes:
                if r.family != fam:
                    continue
                if (r.fwmark, r.table) not in rules:
                    out.append(f"IPv{fam} policy rule 'fwmark {r.fwmark} lookup {r.table}' missing")
                if r.table not in local:
                    out.append(f"IPv{fam} route 'local default dev lo table {r.table}' missing")
        return out
    finally:
        nl.close()


def remove(routes: Sequence[PolicyRoute]) -> None:
    """Delete ``routes``' rules and local routes; absent ones are fine."""
    if not routes:
        return
    nl = Netlink()
    try:
        for r in routes:
            for kind, body in ((RTM_DELRULE, _rule_msg(r)), (RTM_DELROUTE, _route_msg(r))):
                try:
                    nl.request(kind, F_ACK, body)
                except OSError as e:
                    if e.errno not in (ENOENT, ESRCH):
                        raise NetfilterError("policy routing removal failed", e.strerror or str(e), e.errno or 0) from e
    finally:
        nl.close()
