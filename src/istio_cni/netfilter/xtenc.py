"""Encode a parsed ``XtRule`` as the kernel's ``ipt_entry`` / ``ip6t_entry`` bytes.

x_tables ABI rules this module follows (environment-probe §4):

* every match/target is a 32-byte header (u16 size, char name[29], u8 revision) plus its
  payload, and the total is padded to ``XT_ALIGN`` (8 bytes);
* the standard target (verdicts and jumps) must be exactly 40 bytes: header + int verdict;
  libiptc maps the label (``RETURN``, ``ISTIO_OUTPUT``) to a verdict or jump at commit;
* ports in tcp/udp/multiport matches are host byte order, NAT and TPROXY ports network order;
* an interface mask covers ``strlen(name) + 1`` bytes of 0xff;
* IPv6 entries need ``IP6T_F_PROTO`` in ``flags`` whenever a protocol is given.

Payload layouts come from the compiled ``istio_cni._nf`` (API mode: the C compiler laid the
structs out from the kernel headers), so sizes and offsets are never guessed here.
``encode_specs`` is the compiled fast path (``_nf_xtenc.c``) for the common rule shapes;
it yields the bytes ``encode(parse(spec))`` does or declines, never anything else.
Revisions are the ones iptables 1.8.9 picks on current kernels, so ``iptables-legacy-save``
prints our rules exactly as it prints rules ``iptables-legacy-restore`` wrote.
"""

from __future__ import annotations

import _struct

from .._nf import ffi, lib
from .xt import STD_VERDICTS, XtParseError, XtRule

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Sequence

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "all": 0}
HEADER = 32


def _align(n: int) -> int:
    return (n + 7) & ~7


_EXT_HEAD = _struct.Struct("<H29sB")  # u16 size, char name[29], u8 revision


def _ext(name: str, revision: int, payload: bytes) -> bytes:
    pad = _align(len(payload)) - len(payload)
    if pad:
        payload += b"\0" * pad
    return _EXT_HEAD.pack(HEADER + len(payload), name.encode(), revision) + payload


def _struct_bytes(cdecl: str, **fields: int | list[int]) -> bytes:
    p = ffi.new(cdecl + " *")
    for k, v in fields.items():
        setattr(p, k, v)
    return bytes(ffi.buffer(p))


_LAYOUTS: dict = {}


def _layout(cdecl: str, fields: tuple) -> _struct.Struct:
    """A precompiled ``Struct`` packing ``fields`` ((name, struct format), in offset order)
    of ``cdecl`` at the offsets the compiler chose, zero-filling the rest up to its size.

    What ``_struct_bytes`` does with a cffi object, without the per-call allocation and
    attribute sets (the hot matches of every rule set go through here). Host byte order."""
    st = _LAYOUTS.get(cdecl)
    if st is None:
        fmt, pos = "=", 0
        for name, f in fields:
            off = ffi.offsetof(cdecl, name)
            if off < pos:
                raise AssertionError(f"{cdecl}.{name}: fields not in offset order")
            fmt += f"{off - pos}x{f}"
            pos = off + _struct.calcsize("=" + f)
        fmt += f"{ffi.sizeof(cdecl) - pos}x"
        st = _LAYOUTS[cdecl] = _struct.Struct(fmt)
    return st


def _patch(buf: bytes, offset: int, data: bytes) -> bytes:
    return buf[:offset] + data + buf[offset + len(data) :]


def _be16(n: int) -> bytes:
    return n.to_bytes(2, "big")


# ---- matches -----------------------------------------------------------------------


def _m_tcpudp(name: str, p: dict, family: int) -> bytes:
    inv = 0
    if p.get("inv_sport"):
        inv |= lib.XT_TCP_INV_SRCPT
    if p.get("inv_dport"):
        inv |= lib.XT_TCP_INV_DSTPT
    st = _layout(f"struct xt_{name}", (("spts", "2H"), ("dpts", "2H"), ("invflags", "B")))
    sport, dport = p.get("sport", (0, 0xFFFF)), p.get("dport", (0, 0xFFFF))
    return _ext(name, 0, st.pack(*sport, *dport, inv))


def _m_owner(name: str, p: dict, family: int) -> bytes:
    match = invert = 0
    ids = {"uid": (0, 0), "gid": (0, 0)}
    for kind, flag in (("uid", lib.XT_OWNER_UID), ("gid", lib.XT_OWNER_GID)):
        if kind in p:
            match |= flag
            ids[kind] = p[kind]
            if p.get("inv_" + kind):
                invert |= flag
    st = _layout(
        "struct xt_owner_match_info",
        (("uid_min", "I"), ("uid_max", "I"), ("gid_min", "I"), ("gid_max", "I"), ("match", "B"), ("invert", "B")),
    )
    return _ext("owner", 1, st.pack(*ids["uid"], *ids["gid"], match, invert))


def _m_multiport(name: str, p: dict, family: int) -> bytes:
    kinds = {"s": lib.XT_MULTIPORT_SOURCE, "d": lib.XT_MULTIPORT_DESTINATION, "either": 2}
    ports, pflags = [], []
    for lo, hi in p["ports"]:
        if lo == hi:
            ports.append(lo)
            pflags.append(0)
        else:  # a range takes two slots, the first flagged
            ports += [lo, hi]
            pflags += [1, 0]
    if len(ports) > 15:
        raise XtParseError("multiport: more than 15 port slots")
    return _ext(
        "multiport",
        1,
        _struct_bytes(
            "struct xt_multiport_v1",
            flags=kinds[p["kind"]],
            count=len(ports),
            ports=ports,
            pflags=pflags,
            invert=1 if p["inv"] else 0,
        ),
    )


_CT_BITS = None


def _ct_state_bits() -> dict:
    global _CT_BITS
    if _CT_BITS is None:
        _CT_BITS = {
            "INVALID": lib.XT_CONNTRACK_STATE_INVALID,
            "ESTABLISHED": 1 << 1,
            "RELATED": 1 << 2,
            "NEW": 1 << 3,
            "UNTRACKED": lib.XT_CONNTRACK_STATE_UNTRACKED,
            "SNAT": lib.XT_CONNTRACK_STATE_SNAT,
            "DNAT": lib.XT_CONNTRACK_STATE_DNAT,
        }
    return _CT_BITS


def _m_conntrack(name: str, p: dict, family: int) -> bytes:
    bits = _ct_state_bits()
    mask = 0
    for s in p["ctstate"]:
        mask |= bits[s]
    flag = lib.XT_CONNTRACK_STATE
    return _ext(
        "conntrack",
        3,
        _struct_bytes(
            "struct xt_conntrack_mtinfo3", match_flags=flag, invert_flags=flag if p["inv"] else 0, state_mask=mask
        ),
    )


def _m_mark(name: str, p: dict, family: int) -> bytes:
    return _ext(
        name, 1, _struct_bytes(f"struct xt_{name}_mtinfo1", mark=p["mark"], mask=p["mask"], invert=1 if p["inv"] else 0)
    )


def _m_socket(name: str, p: dict, family: int) -> bytes:
    flags = (
        (1 if p.get("transparent") else 0) | (2 if p.get("nowildcard") else 0) | (4 if p.get("restore-skmark") else 0)
    )
    return _ext("socket", 3, _struct_bytes("struct xt_socket_mtinfo3", flags=flags))


MATCH_ENCODERS = {
    "tcp": _m_tcpudp,
    "udp": _m_tcpudp,
    "owner": _m_owner,
    "multiport": _m_multiport,
    "conntrack": _m_conntrack,
    "mark": _m_mark,
    "connmark": _m_mark,
    "socket": _m_socket,
}


# ---- targets -----------------------------------------------------------------------


def standard_target(label: str) -> bytes:
    """The 40-byte standard target naming a verdict or a chain (libiptc resolves it)."""
    return _t_standard(label)


def _t_standard(label: str) -> bytes:
    if len(label) > 28:
        raise XtParseError(f"chain name too long: {label!r}")
    return _ext(label, 0, b"\0" * 4)


def _t_redirect(p: dict, family: int) -> bytes:
    ports = p["ports"]
    if family == 4:
        buf = _struct_bytes("struct nf_nat_ipv4_multi_range_compat", rangesize=1)
        if ports:
            buf = _patch(buf, 4, lib.NF_NAT_RANGE_PROTO_SPECIFIED.to_bytes(4, "little"))
            buf = _patch(buf, lib.NF_OFF_NAT4_MIN_PROTO, _be16(ports[0]))
            buf = _patch(buf, lib.NF_OFF_NAT4_MAX_PROTO, _be16(ports[1]))
        return _ext("REDIRECT", 0, buf)
    buf = _struct_bytes("struct nf_nat_range", flags=lib.NF_NAT_RANGE_PROTO_SPECIFIED if ports else 0)
    if ports:
        buf = _patch(buf, lib.NF_OFF_NAT_MIN_PROTO, _be16(ports[0]))
        buf = _patch(buf, lib.NF_OFF_NAT_MAX_PROTO, _be16(ports[1]))
    return _ext("REDIRECT", 0, buf)


def _t_tproxy(p: dict, family: int) -> bytes:
    import _socket

    buf = _struct_bytes("struct xt_tproxy_target_info_v1", mark_mask=p["mask"], mark_value=p["mark"])
    buf = _patch(buf, lib.NF_OFF_TPROXY_LPORT, _be16(p["port"]))
    if p["ip"]:
        af = _socket.AF_INET if family == 4 else _socket.AF_INET6
        try:
            buf = _patch(buf, lib.NF_OFF_TPROXY_LADDR, _socket.inet_pton(af, p["ip"]))
        except OSError:
            raise XtParseError(f"TPROXY: bad --on-ip {p['ip']!r}") from None
    return _ext("TPROXY", 1, buf)


def _t_mark(p: dict, family: int) -> bytes:
    return _ext("MARK", 2, _struct_bytes("struct xt_mark_tginfo2", mark=p["mark"], mask=p["mask"]))


def _t_connmark(p: dict, family: int) -> bytes:
    mode = lib.XT_CONNMARK_SAVE if p["mode"] == "save" else lib.XT_CONNMARK_RESTORE
    return _ext(
        "CONNMARK", 2, _struct_bytes("struct xt_connmark_tginfo2", ctmask=p["ctmask"], nfmask=p["nfmask"], mode=mode)
    )


def _t_ct(p: dict, family: int) -> bytes:
    return _ext("CT", 2, _struct_bytes("struct xt_ct_target_info_v1", flags=1 if p["notrack"] else 0, zone=p["zone"]))


TARGET_ENCODERS = {"REDIRECT": _t_redirect, "TPROXY": _t_tproxy, "MARK": _t_mark, "CONNMARK": _t_connmark, "CT": _t_ct}


def is_standard(target_name: str) -> bool:
    """Verdicts and jumps to chains (anything not an extension target)."""
    return target_name in STD_VERDICTS or target_name not in TARGET_ENCODERS


# ---- the entry -----------------------------------------------------------------------


def _iface_bytes(v: tuple[str, bool] | None) -> tuple[bytes, bytes]:
    """(name, mask); the ``16s`` fields of ``_IP4``/``_IP6`` zero-fill them to 16 bytes."""
    if not v:
        return b"", b""
    name = v[0]
    raw = name.encode()
    if name.endswith("+"):  # wildcard: compare the prefix only
        return raw, b"\xff" * (len(raw) - 1)
    return raw, b"\xff" * (len(raw) + 1)


_MASKS: dict = {}


def _addr_bytes(v: tuple[bytes, int, bool] | None, size: int) -> tuple[bytes, bytes]:
    if not v:
        return b"", b""  # zero-filled by the struct
    mask = _MASKS.get((size, v[1]))
    if mask is None:
        bits = size * 8
        mask = (((1 << bits) - 1) ^ ((1 << (bits - v[1])) - 1)).to_bytes(size, "big")
        _MASKS[(size, v[1])] = mask
    return v[0], mask


# ipt_ip: src, dst, smsk, dmsk, iniface[16], outiface[16], iniface_mask, outiface_mask, proto,
# flags, invflags; ip6t_ip6 the same with 16-byte addresses and a tos byte after proto.
_IP4 = _struct.Struct("<4s4s4s4s16s16s16s16sHBB")
_IP4 = _struct.Struct(_IP4.format + f"{lib.NF_SIZEOF_IPT_IP - _IP4.size}x")
_IP6 = _struct.Struct("<16s16s16s16s16s16s16s16sHBBB")
_IP6 = _struct.Struct(_IP6.format + f"{lib.NF_SIZEOF_IP6T_IP6 - _IP6.size}x")


def ip_header(rule: XtRule) -> bytes:
    """The ``ipt_ip`` / ``ip6t_ip6`` part of the entry."""
    v6 = rule.family == 6
    size = 16 if v6 else 4
    src, smsk = _addr_bytes(rule.src, size)
    dst, dmsk = _addr_bytes(rule.dst, size)
    iif, imsk = _iface_bytes(rule.iniface)
    oif, omsk = _iface_bytes(rule.outiface)
    inv = 0
    for v, bit in ((rule.iniface, 0x01), (rule.outiface, 0x02), (rule.src, 0x08), (rule.dst, 0x10)):
        if v and v[-1]:
            inv |= bit
    proto = 0
    flags = 0
    if rule.proto:
        proto = PROTO_NUMBERS[rule.proto[0]]
        if rule.proto[1]:
            inv |= 0x40  # IPT_INV_PROTO == IP6T_INV_PROTO
        if v6 and proto:
            flags |= lib.IP6T_F_PROTO
    if v6:
        return _IP6.pack(src, dst, smsk, dmsk, iif, oif, imsk, omsk, proto, 0, flags, inv)
    return _IP4.pack(src, dst, smsk, dmsk, iif, oif, imsk, omsk, proto, flags, inv)


def encode_parts(rule: XtRule) -> tuple[bytes, bytes, bytes]:
    """(ip header, matches blob, target blob) for ``rule``."""
    matches = b"".join(MATCH_ENCODERS[name](name, dict(p), rule.family) for name, p in rule.matches)
    tname, tparams = rule.target
    if is_standard(tname):
        if tparams:
            raise XtParseError(f"target {tname!r} takes no options")
        target = _t_standard(tname)
    else:
        target = TARGET_ENCODERS[tname](dict(tparams), rule.family)
    return ip_header(rule), matches, target


def encode(rule: XtRule) -> bytes:
    """The complete entry, ready for ``iptc_append_entry`` / ``ip6tc_append_entry``."""
    return _entry(rule.family, *encode_parts(rule))


def encode_with_identity(rule: XtRule) -> tuple:
    """(entry, identity) from one encoding pass (what a commit needs for every rule)."""
    parts = encode_parts(rule)
    return _entry(rule.family, *parts), identity_of(*parts, rule.target[0])


def _entry_layout(ip_size: int, entry_size: int, offset_at: int) -> tuple:
    """(Struct of the entry's tail after the ip header, entry size): nfcache zeros,
    target_offset and next_offset (u16), zeros for comefrom and counters."""
    before = offset_at - ip_size
    return _struct.Struct(f"<{before}xHH{entry_size - offset_at - 4}x"), entry_size


_ENTRY = {
    4: _entry_layout(lib.NF_SIZEOF_IPT_IP, lib.NF_SIZEOF_IPT_ENTRY, lib.NF_OFF_IPT_ENTRY_TARGET_OFFSET),
    6: _entry_layout(lib.NF_SIZEOF_IP6T_IP6, lib.NF_SIZEOF_IP6T_ENTRY, lib.NF_OFF_IP6T_ENTRY_TARGET_OFFSET),
}


def _entry(family: int, ip: bytes, matches: bytes, target: bytes) -> bytes:
    tail, entry_size = _ENTRY[family]
    target_offset = entry_size + len(matches)
    return ip + tail.pack(target_offset, target_offset + len(target)) + matches + target


def split_exts(blob: bytes) -> tuple:
    """((name, revision, payload), ...) of a run of matches (or one target).

    Only the bytes up to the name's NUL count: the rest of the 29-byte name field is not
    cleared by iptables and comes back from the kernel as whatever the writer left there.
    """
    out = []
    i = 0
    while i + HEADER <= len(blob):
        size = int.from_bytes(blob[i : i + 2], "little")
        if size < HEADER:
            break
        name = blob[i + 2 : i + 31].split(b"\0", 1)[0].decode(errors="replace")
        out.append((name, blob[i + 31], blob[i + HEADER : i + size]))
        i += size
    return tuple(out)


def identity_of(ip: bytes, matches: bytes, target: bytes, label: str) -> tuple:
    """The comparable form of an entry. Standard targets compare by label: libiptc turns
    the label into a verdict or a jump offset, so their bytes differ per table."""
    t = split_exts(target)
    std = not t or t[0][0] == "" or is_standard(t[0][0])
    return (ip, split_exts(matches), label if std else t)


def identity(rule: XtRule) -> tuple:
    """``identity_of`` for a rule we would write (what ``check`` compares)."""
    ip, matches, target = encode_parts(rule)
    return identity_of(ip, matches, target, rule.target[0])


# ---- the compiled fast path ----------------------------------------------------------

_ENTRY_ROOM = 1024  # per rule; far above any entry the fast path accepts (<= 8 small matches)


def encode_specs(specs: list, family: int) -> list:
    """``[encode(parse(spec, family)) or None, ...]``: the shapes ``_nf_xtenc.c`` covers are
    encoded there, all in one call; None means "take the Python path", which covers
    everything else and raises the ``XtParseError`` for bad tokens (the C side never
    reports errors, it only declines)."""
    out: list = [None] * len(specs)
    todo = [i for i, spec in enumerate(specs) if _passable(spec)]
    if not todo:
        return out
    toks = "\0".join(["\0".join(specs[i]) for i in todo]).encode("ascii")
    n = len(todo)
    sizes = ffi.new("int[]", n)
    buf = ffi.new("unsigned char[]", _ENTRY_ROOM * n)
    total = lib.nf_xt_encode(family, toks, len(toks), [len(specs[i]) for i in todo], n, buf, _ENTRY_ROOM * n, sizes)
    if total < 0:
        raise AssertionError("nf_xt_encode: token counts do not match the token buffer")
    blob = ffi.buffer(buf, total)[:]
    pos = 0
    for j, i in enumerate(todo):
        size = sizes[j]
        if size:
            out[i] = blob[pos : pos + size]
            pos += size
    return out


def _passable(spec: Sequence[str]) -> bool:
    """Can ``spec`` travel as NUL-separated ASCII (non-empty, str tokens without NULs)?
    Anything else is left to the Python path to accept or reject."""
    try:
        joined = "\0".join(spec)
    except TypeError:
        return False
    return bool(spec) and joined.isascii() and joined.count("\0") == len(spec) - 1


def encode_spec(spec: Sequence[str], family: int) -> bytes | None:
    """``encode_specs`` for one rule."""
    return encode_specs([spec], family)[0]


def identity_of_entry(entry: bytes, family: int) -> tuple:
    """``identity`` of an encoded entry of ours (for ``encode_specs`` results): the label
    of a standard target is the name we wrote into it."""
    ip_size, entry_size, at = _ENTRY_SIZES[family]
    target_offset = int.from_bytes(entry[at : at + 2], "little")
    target = entry[target_offset:]
    label = target[2:31].split(b"\0", 1)[0].decode()
    return identity_of(entry[:ip_size], entry[entry_size:target_offset], target, label)


# (ip header size, entry head size, where target_offset sits)
_ENTRY_SIZES = {
    4: (lib.NF_SIZEOF_IPT_IP, lib.NF_SIZEOF_IPT_ENTRY, lib.NF_OFF_IPT_ENTRY_TARGET_OFFSET),
    6: (lib.NF_SIZEOF_IP6T_IP6, lib.NF_SIZEOF_IP6T_ENTRY, lib.NF_OFF_IP6T_ENTRY_TARGET_OFFSET),
}
