"""Parse upstream istio-iptables rule tokens into a normalised, structured rule.

Input is a ``Rule.spec`` token tuple in upstream's spelling (``-p tcp ! --dport 15008 -m
owner --uid-owner 1337 -j ISTIO_IN_REDIRECT``) or a line of ``iptables-save`` output, which
spells the same rule its own way (``-m tcp``, ``--set-xmark 0x539/0xffffffff``, ``--on-ip``,
hex marks, explicit default masks). Both parse to the same ``XtRule``, so equality of parsed
rules is the normaliser used by ``check`` and by the tests comparing save output with the
rule set. ``xtenc`` turns an ``XtRule`` into the kernel's ``ipt_entry`` / ``ip6t_entry``.

Match options attach to the most recent ``-m`` match that knows them; ``--dport``/``--sport``
without ``-m tcp|udp`` load the protocol's match implicitly at that point, as iptables does,
so the match order (which the kernel keeps) is the order of first appearance.
"""

from __future__ import annotations

from ..value import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    Names = Callable[[str, str], int]  # (kind "uid" | "gid", name) -> id: system_names or a test's

ALL = 0xFFFFFFFF
STD_VERDICTS = ("ACCEPT", "DROP", "RETURN", "QUEUE")
CT_STATES = ("INVALID", "ESTABLISHED", "RELATED", "NEW", "UNTRACKED", "SNAT", "DNAT")


class XtParseError(ValueError):
    """A token the parser does not know or a bad value; the message names it."""


class XtRule(Value):
    """One rule, normalised. Addresses are (packed bytes, prefix length, inverted)."""

    __slots__ = ("family", "src", "dst", "iniface", "outiface", "proto", "matches", "target")
    family: int
    src: tuple[bytes, int, bool] | None
    dst: tuple[bytes, int, bool] | None
    iniface: tuple[str, bool] | None
    outiface: tuple[str, bool] | None
    proto: tuple[str, bool] | None
    matches: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]  # (name, sorted (key, value) pairs)
    target: tuple[str, tuple[tuple[str, object], ...]]  # (name, sorted (key, value) pairs)

    def __init__(
        self,
        family: int,
        src: tuple[bytes, int, bool] | None,
        dst: tuple[bytes, int, bool] | None,
        iniface: tuple[str, bool] | None,
        outiface: tuple[str, bool] | None,
        proto: tuple[str, bool] | None,
        matches: tuple[tuple[str, tuple[tuple[str, object], ...]], ...],
        target: tuple[str, tuple[tuple[str, object], ...]],
    ) -> None:
        # Spelled out instead of Value's generic loop: one is built per rule per commit.
        set_ = object.__setattr__
        set_(self, "family", family)
        set_(self, "src", src)
        set_(self, "dst", dst)
        set_(self, "iniface", iniface)
        set_(self, "outiface", outiface)
        set_(self, "proto", proto)
        set_(self, "matches", matches)
        set_(self, "target", target)


def _num(tok: str, what: str) -> int:
    try:
        return int(tok, 0)
    except ValueError:
        raise XtParseError(f"bad {what} {tok!r}") from None


def _port_range(tok: str) -> tuple:
    lo, sep, hi = tok.partition(":")  # "p", "a:b", "a:" (to 65535), ":b" (from 0)
    a = _num(lo, "port") if lo else 0
    b = _num(hi, "port") if hi else (0xFFFF if sep else a)
    if not (0 <= a <= b <= 0xFFFF):
        raise XtParseError(f"bad port or port range {tok!r}")
    return (a, b)


def _value_mask(tok: str, what: str) -> tuple:
    v, sep, m = tok.partition("/")
    return (_num(v, what), _num(m, what + " mask") if sep else ALL)


def _cidr(tok: str, family: int) -> tuple:
    import _socket

    addr, sep, plen = tok.partition("/")
    af = _socket.AF_INET if family == 4 else _socket.AF_INET6
    try:
        raw = _socket.inet_pton(af, addr)
    except OSError:
        raise XtParseError(f"bad IPv{family} address {tok!r}") from None
    bits = len(raw) * 8
    n = _num(plen, "prefix length") if sep else bits
    if not 0 <= n <= bits:
        raise XtParseError(f"bad prefix length in {tok!r}")
    mask = ((1 << bits) - 1) ^ ((1 << (bits - n)) - 1)
    masked = (int.from_bytes(raw, "big") & mask).to_bytes(len(raw), "big")
    return (masked, n)


def _id(tok: str, kind: str, names: Names) -> tuple:
    """uid/gid or range ``a-b``; names go through ``names(kind, name)``."""
    lo, sep, hi = tok.partition("-")
    if sep and lo.isdigit() and hi.isdigit():
        return (int(lo), int(hi))
    n = int(tok) if tok.isdigit() else names(kind, tok)
    return (n, n)


def system_names(kind: str, name: str) -> int:
    """Resolve a user or group name on this host, as iptables does."""
    try:
        if kind == "uid":
            import pwd

            return pwd.getpwnam(name).pw_uid
        import grp

        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise XtParseError(f"unknown {'user' if kind == 'uid' else 'group'} {name!r}") from None


# ---- per-extension option handlers: (params dict, neg, value token, names) -> None ------


def _tcpudp(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    key = "sport" if opt in ("--sport", "--source-port") else "dport"
    p[key] = _port_range(val)
    p["inv_" + key] = neg


def _owner(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    kind = "uid" if opt == "--uid-owner" else "gid"
    p[kind] = _id(val, kind, names)
    p["inv_" + kind] = neg


def _multiport(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    kinds = {"--dports": "d", "--destination-ports": "d", "--sports": "s", "--source-ports": "s", "--ports": "either"}
    ports = tuple(_port_range(x) for x in val.split(","))
    if len(ports) > 15:
        raise XtParseError(f"multiport takes at most 15 ports, got {val!r}")
    p.update(kind=kinds[opt], ports=ports, inv=neg)


def _conntrack(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    states = frozenset(val.split(","))
    bad = sorted(states - set(CT_STATES))
    if bad:
        raise XtParseError(f"unknown conntrack state {bad[0]!r}")
    p.update(ctstate=tuple(sorted(states)), inv=neg)


def _mark_match(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    p["mark"], p["mask"] = _value_mask(val, "mark")
    p["inv"] = neg


def _flag(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    p[opt.lstrip("-")] = True


MATCHES = {
    "tcp": {"--dport": _tcpudp, "--sport": _tcpudp, "--destination-port": _tcpudp, "--source-port": _tcpudp},
    "udp": {"--dport": _tcpudp, "--sport": _tcpudp, "--destination-port": _tcpudp, "--source-port": _tcpudp},
    "owner": {"--uid-owner": _owner, "--gid-owner": _owner},
    "multiport": dict.fromkeys(
        ("--dports", "--destination-ports", "--sports", "--source-ports", "--ports"), _multiport
    ),
    "conntrack": {"--ctstate": _conntrack},
    "mark": {"--mark": _mark_match},
    "connmark": {"--mark": _mark_match},
    "socket": {"--transparent": _flag, "--nowildcard": _flag, "--restore-skmark": _flag},
}
FLAG_OPTIONS = {"--transparent", "--nowildcard", "--restore-skmark", "--save-mark", "--restore-mark", "--notrack"}


def _redirect(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    lo, _, hi = val.partition("-")
    p["ports"] = (_num(lo, "port"), _num(hi, "port") if hi else _num(lo, "port"))


def _tproxy(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    if opt == "--on-port":
        p["port"] = _num(val, "port")
    elif opt == "--on-ip":
        p["ip"] = val
    else:
        p["mark"], p["mask"] = _value_mask(val, "mark")


def _mark_target(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    v, m = _value_mask(val, "mark")
    # --set-mark v[/m] means "mask = m | v" (libxt_MARK); --set-xmark is literal.
    p["mark"], p["mask"] = (v, m | v) if opt == "--set-mark" else (v, m)


def _connmark_target(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    if opt in ("--save-mark", "--restore-mark"):
        p["mode"] = opt[2:-5]
    elif opt == "--mask":
        p["ctmask"] = p["nfmask"] = _num(val, "mask")
    else:
        p[opt[2:]] = _num(val, "mask")


def _ct(p: dict, opt: str, neg: bool, val: str, names: Names) -> None:
    if opt == "--zone":
        p["zone"] = _num(val, "zone")
    else:
        p["notrack"] = True


TARGETS = {
    "REDIRECT": {"--to-ports": _redirect, "--to-port": _redirect},
    "TPROXY": {"--on-port": _tproxy, "--on-ip": _tproxy, "--tproxy-mark": _tproxy},
    "MARK": {"--set-mark": _mark_target, "--set-xmark": _mark_target},
    "CONNMARK": {
        "--save-mark": _connmark_target,
        "--restore-mark": _connmark_target,
        "--mask": _connmark_target,
        "--nfmask": _connmark_target,
        "--ctmask": _connmark_target,
    },
    "CT": {"--zone": _ct, "--notrack": _ct},
}
TARGET_DEFAULTS: dict[str, dict[str, object]] = {
    "TPROXY": {"ip": None, "mark": 0, "mask": 0},
    "CONNMARK": {"ctmask": ALL, "nfmask": ALL},
    "CT": {"zone": 0, "notrack": False},
}
PROTOS = ("tcp", "udp", "icmp", "icmpv6", "sctp", "all")


def _freeze(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def _iface(name: str) -> str:
    if not name or len(name) > 15:
        raise XtParseError(f"bad interface name {name!r}")
    return name


# Options of the rule itself (not of a match or target) -> what they set.
_BASIC = {
    "-s": "src",
    "--source": "src",
    "-d": "dst",
    "--destination": "dst",
    "-i": "iniface",
    "--in-interface": "iniface",
    "-o": "outiface",
    "--out-interface": "outiface",
    "-p": "proto",
    "--protocol": "proto",
    "-m": "match",
    "--match": "match",
    "-j": "jump",
    "--jump": "jump",
}


def parse(spec: Iterable[str], family: int = 4, names: Names = system_names) -> XtRule:
    """Parse one rule's tokens (no ``-A CHAIN`` head) into an ``XtRule``."""
    toks = list(spec)
    fields: dict[str, tuple | None] = {"src": None, "dst": None, "iniface": None, "outiface": None, "proto": None}
    matches: list = []  # [name, params]
    target: str | None = None
    tparams: dict = {}
    neg = False
    i = 0
    n = len(toks)
    while i < n:
        tok = toks[i]
        if tok == "!":
            neg = True
            i += 1
            continue
        if tok in FLAG_OPTIONS:
            val = ""  # a flag takes no value token; its handler does not read this
            i += 1
        else:
            if i + 1 >= n:
                raise XtParseError(f"option {tok!r} needs a value in {' '.join(toks)!r}")
            val = toks[i + 1]
            i += 2
        kind = _BASIC.get(tok)
        if kind is None:  # an option of the target or of a match
            if target is not None:
                handler = TARGETS.get(target, {}).get(tok)
                if handler is None:
                    raise XtParseError(f"unknown option {tok!r} for target {target!r}")
                handler(tparams, tok, neg, val, names)
            else:
                _match_option(matches, fields, tok, neg, val, names)
        elif kind == "src" or kind == "dst":
            fields[kind] = _cidr(val, family) + (neg,)
        elif kind == "iniface" or kind == "outiface":
            fields[kind] = (_iface(val), neg)
        elif kind == "proto":
            if val not in PROTOS:
                raise XtParseError(f"unknown protocol {val!r}")
            fields["proto"] = (val, neg)
        elif kind == "match":
            if val not in MATCHES:
                raise XtParseError(f"unknown match {val!r}")
            matches.append([val, {}])
        else:  # jump
            target = val
        neg = False
    if target is None:
        raise XtParseError(f"rule has no target (-j): {' '.join(toks)!r}")
    return XtRule(
        family,
        fields["src"],
        fields["dst"],
        fields["iniface"],
        fields["outiface"],
        fields["proto"],
        tuple((name, _freeze(p)) for name, p in matches),
        (target, _freeze(_target_params(target, tparams))),
    )


def _target_params(target: str, tparams: dict) -> dict:
    """Defaults filled in and required options checked, so both spellings compare equal."""
    if target in TARGET_DEFAULTS:
        tparams = {**TARGET_DEFAULTS[target], **tparams}
    if target == "TPROXY":
        if "port" not in tparams:
            raise XtParseError("TPROXY needs --on-port")
        if tparams["ip"] in ("0.0.0.0", "::"):
            tparams["ip"] = None  # iptables-save spells the default "any" address out
    elif target == "REDIRECT":
        tparams.setdefault("ports", None)
    elif target == "MARK" and "mark" not in tparams:
        raise XtParseError("MARK needs --set-mark or --set-xmark")
    elif target == "CONNMARK" and "mode" not in tparams:
        raise XtParseError("CONNMARK needs --save-mark or --restore-mark")
    return tparams


def _match_option(matches: list, fields: dict, tok: str, neg: bool, val: str, names: Names) -> None:
    if matches and tok in MATCHES[matches[-1][0]]:
        name, params = matches[-1]
        MATCHES[name][tok](params, tok, neg, val, names)
        return
    proto = fields["proto"][0] if fields["proto"] else None
    if proto in ("tcp", "udp") and tok in MATCHES[proto]:
        for m in matches:  # a second port option joins the implicit match already loaded
            if m[0] == proto:
                MATCHES[proto][tok](m[1], tok, neg, val, names)
                return
        implicit: dict = {}
        MATCHES[proto][tok](implicit, tok, neg, val, names)
        matches.append([proto, implicit])
        return
    raise XtParseError(f"unknown token {tok!r}")


def parse_save_line(line: str, family: int = 4, names: Names = system_names) -> tuple[str, XtRule]:
    """``-A CHAIN spec...`` (an ``iptables-save`` rule line) -> (chain, XtRule)."""
    toks = line.split()
    if len(toks) < 2 or toks[0] != "-A":
        raise XtParseError(f"not a rule line: {line!r}")
    return toks[1], parse(toks[2:], family, names)


def describe(rule: XtRule) -> str:
    """A short human form for messages (not a restore line)."""
    parts = []
    for key, flag in (("src", "-s"), ("dst", "-d")):
        v = getattr(rule, key)
        if v:
            import _socket

            af = _socket.AF_INET if rule.family == 4 else _socket.AF_INET6
            parts += (["!"] if v[2] else []) + [flag, f"{_socket.inet_ntop(af, v[0])}/{v[1]}"]
    for key, flag in (("iniface", "-i"), ("outiface", "-o"), ("proto", "-p")):
        v = getattr(rule, key)
        if v:
            parts += (["!"] if v[1] else []) + [flag, v[0]]
    for name, params in rule.matches:
        parts += ["-m", name] + [f"{k}={v}" for k, v in params]
    parts += ["-j", rule.target[0]] + [f"{k}={v}" for k, v in rule.target[1]]
    return " ".join(parts)
