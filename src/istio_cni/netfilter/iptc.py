"""libiptc backend: legacy x_tables rules committed in-process, one transaction per table.

Per table: ``iptc_init`` (reads the kernel blob), flush or create our ``ISTIO_*`` chains, take
our old jumps/rules out of the built-in chains, append/insert the new rules, ``iptc_commit``
(one ``IPT_SO_SET_REPLACE``: the kernel swaps the whole table or nothing). Applying the same
rule set twice gives the same table; a different rule set replaces ours. When the handle
reads back an empty table (a fresh pod netns, the plugin's usual case) the clearing walk is
skipped: there is nothing of ours to take out.

The per-rule work of a one-shot plugin process (parse the tokens, encode the entry) is the
largest part of a commit after the kernel's; the common rule shapes are encoded by compiled
code (``xtenc.encode_spec``, ``_nf_xtenc.c``), the rest by ``xt.parse`` + ``xtenc`` with
precompiled ``Struct`` packing (benchmarks/bench_netfilter.py measures it).

Tables of a previous rule set that the new one does not name (``raw`` when DNS capture was
turned off, ``ip6tables`` when IPv6 was) lose our chains and rules in the same round.

Across tables the kernel offers no transaction, so before editing a table we dump its rules
and, if a later table's commit fails, write the dumps of the tables already committed back
(a fresh handle: the kernel refuses a commit from a handle read before our own commit). The
netns is left with the rules it had; an empty legacy table that ``iptc_init`` instantiated
stays instantiated (that is how x_tables works).

No ``/run/xtables.lock``: it is node-wide and serialises every pod's ADD; the rules live in
the pod's own netns and the kernel rejects a commit based on a stale blob with EAGAIN, which
we retry a bounded number of times. libiptc keeps global state (``iptc_strerror`` reports on
the last call) and is not thread-safe, so in-process callers (the node agent) serialise
through ``LOCK``; separate plugin processes share nothing and run in parallel.
"""

from __future__ import annotations

import _thread

from ..errors import NetfilterError
from ..log import log
from ..rules.model import RuleSet, Table
from . import owned
from .xt import parse
from .xtenc import (
    encode,
    encode_specs,
    encode_with_identity,
    identity,
    identity_of,
    identity_of_entry,
    standard_target,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

LOCK = _thread.allocate_lock()
EAGAIN = 11
RETRIES = 5
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}


# ``iptc_init`` errnos that mean "this kernel offers no such legacy table" rather than a
# transient or permission problem: the table's module is absent or cannot load (ENOENT, "Table
# does not exist (do you need to insmod?)"), x_tables itself is missing (ENOPROTOOPT from the
# getsockopt), or the address family is (EAFNOSUPPORT, EPROTONOSUPPORT, EOPNOTSUPP).
# Literals like EAGAIN above (Linux values): ENOENT, ENOPROTOOPT, EPROTONOSUPPORT, EOPNOTSUPP,
# EAFNOSUPPORT.
TABLE_MISSING_ERRNOS = frozenset((2, 92, 93, 95, 97))


class TableUnavailable(NetfilterError):
    """``iptc_init`` found no usable legacy table. Raised before any handle commits, so the
    netns is unchanged and another backend may take over (``netfilter.apply`` under ``auto``)."""


FUNCTIONS = frozenset(
    (
        "init",
        "free",
        "is_chain",
        "first_chain",
        "next_chain",
        "first_rule",
        "next_rule",
        "get_target",
        "builtin",
        "create_chain",
        "flush_entries",
        "delete_chain",
        "append_entry",
        "insert_entry",
        "delete_num_entry",
        "commit",
        "strerror",
    )
)


class _Lib:
    """The iptc_* (IPv4) or ip6tc_* (IPv6) function set behind one face."""

    def __init__(self, family: int) -> None:
        from .._nf import ffi, lib

        p = "iptc_" if family == 4 else "ip6tc_"
        self.family = family
        self.ffi = ffi
        self.entry_type = "struct ipt_entry *" if family == 4 else "struct ip6t_entry *"
        self.entry_size = lib.NF_SIZEOF_IPT_ENTRY if family == 4 else lib.NF_SIZEOF_IP6T_ENTRY
        self.ip_size = lib.NF_SIZEOF_IPT_IP if family == 4 else lib.NF_SIZEOF_IP6T_IP6
        self._lib, self._prefix = lib, p
        self.names_file = "ip_tables_names" if family == 4 else "ip6_tables_names"

    def __getattr__(self, name: str) -> Any:  # a cffi function
        """``iptc_<name>`` / ``ip6tc_<name>``, bound on first use: cffi builds each function
        object lazily, and a one-shot commit into a fresh netns needs only half of them."""
        if name not in FUNCTIONS:
            raise AttributeError(name)
        fn = getattr(self._lib, self._prefix + name)
        setattr(self, name, fn)
        return fn

    def error(self, what: str) -> NetfilterError:
        err = self.ffi.errno
        msg = self.ffi.string(self.strerror(err)).decode(errors="replace")
        return NetfilterError(f"libiptc (IPv{self.family}) {what} failed", f"{msg} (errno {err})", errno=err)


_LIBS: dict = {}


def _lib(family: int) -> _Lib:
    if family not in _LIBS:
        _LIBS[family] = _Lib(family)
    return _LIBS[family]


def live_tables(family: int) -> set:
    """Tables instantiated in the current netns (reading them has no side effect).

    Read with a raw ``open``/``read`` from ``posix`` (``os`` stays off the ADD path: see
    ``istio_cni.environ``): a text-mode ``open`` costs a few times more, and this runs twice
    in every commit (the list is a handful of short names)."""
    import posix

    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    try:
        fd = posix.open(f"/proc/thread-self/net/{name}", posix.O_RDONLY | posix.O_CLOEXEC)
    except FileNotFoundError:
        return set()
    try:
        chunks = []
        while True:
            chunk = posix.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        posix.close(fd)
    return set(b"".join(chunks).decode().split())


class Handle:
    """One ``iptc_init`` handle: read helpers and the edits a commit is made of."""

    def __init__(self, lib: _Lib, table: str) -> None:
        self.lib = lib
        self.table = table
        self.dirty = False
        self.h = lib.init(table.encode())
        if self.h == lib.ffi.NULL:
            e = lib.error(f"init of table {table}")
            if e.errno in TABLE_MISSING_ERRNOS:
                raise TableUnavailable(str(e.msg), e.details, errno=e.errno)
            raise e

    def close(self) -> None:
        if self.h is not None:
            self.lib.free(self.h)
            self.h = None

    def chains(self) -> list:
        out, ffi = [], self.lib.ffi
        c = self.lib.first_chain(self.h)
        while c != ffi.NULL:
            out.append(ffi.string(c).decode())
            c = self.lib.next_chain(self.h)
        return out

    def rules(self, chain: str) -> list:
        """[(identity, target label, upstream shape?)] of ``chain``'s rules in order."""
        out, lib, ffi = [], self.lib, self.lib.ffi
        bchain = chain.encode()
        e = lib.first_rule(bchain, self.h)
        while e != ffi.NULL:
            label = ffi.string(lib.get_target(e, self.h)).decode()
            raw = bytes(ffi.buffer(ffi.cast("char *", e), e.next_offset))
            ident = identity_of(
                raw[: lib.ip_size], raw[lib.entry_size : e.target_offset], raw[e.target_offset :], label
            )
            out.append((ident, label, self._shape(chain, raw[: lib.ip_size], ident, label)))
            e = lib.next_rule(e, self.h)
        return out

    def _shape(self, chain: str, ip: bytes, ident: tuple, label: str) -> bool:
        if self.lib.family == 4:
            addrs, ifaces, proto_at = ip[8:16], ip[16:48], 80
        else:
            addrs, ifaces, proto_at = ip[32:64], ip[64:96], 128
        proto = {6: "tcp", 17: "udp"}.get(int.from_bytes(ip[proto_at : proto_at + 2], "little"))
        target = label if isinstance(ident[2], str) else ident[2][0][0]
        return owned.upstream_shape(
            self.table,
            chain,
            ifaces[:16].split(b"\0", 1)[0].decode(),
            ifaces[16:].split(b"\0", 1)[0].decode(),
            proto,
            any(addrs),
            tuple(m[0] for m in ident[1]),
            target,
        )

    def call(self, fn: Callable[..., int], what: str, *args: object) -> None:
        if not fn(*args, self.h):
            raise self.lib.error(what)

    def commit(self) -> None:
        if not self.lib.commit(self.h):
            raise self.lib.error(f"commit of table {self.table}")

    def dump(self) -> tuple:
        """(user chains, [(chain, entry bytes)]): the table's rules, re-appendable.

        A standard target read back holds a verdict or a jump offset into this blob; it is
        re-encoded by label so the entry can be appended to another handle.
        """
        lib, ffi = self.lib, self.lib.ffi
        chains = self.chains()
        user = [c for c in chains if not lib.builtin(c.encode(), self.h)]
        entries = []
        for c in chains:
            e = lib.first_rule(c.encode(), self.h)
            while e != ffi.NULL:
                raw = bytes(ffi.buffer(ffi.cast("char *", e), e.next_offset))
                label = ffi.string(lib.get_target(e, self.h)).decode()
                tname = raw[e.target_offset + 2 : e.target_offset + 31].split(b"\0", 1)[0]
                if not tname:  # standard target: verdict or jump
                    raw = raw[: e.target_offset] + standard_target(label)
                entries.append((c, raw))
                e = lib.next_rule(e, self.h)
        return user, entries

    def load(self, dump: tuple) -> None:
        """Make this handle's table equal to ``dump`` (built-in policies are never changed)."""
        user, entries = dump
        lib, ffi = self.lib, self.lib.ffi
        current = self.chains()
        for c in current:
            self.call(lib.flush_entries, f"flush {c}", c.encode())
        for c in current:
            if not lib.builtin(c.encode(), self.h):
                self.call(lib.delete_chain, f"delete chain {c}", c.encode())
        for c in user:
            self.call(lib.create_chain, f"create chain {c}", c.encode())
        for c, raw in entries:
            e = ffi.cast(lib.entry_type, ffi.from_buffer(raw))
            self.call(lib.append_entry, f"append to {c}", c.encode(), e)


# (spec, family) -> [entry, identity or None]. A plugin process commits once, so this only
# pays off in the node agent, where every pod of a deployment has the same rules. Bounded.
_ENCODED: dict = {}
CACHE_LIMIT = 4096


def _prime(rules: tuple, family: int) -> None:
    """Encode the rules not cached yet through the compiled fast path, in one call; the
    shapes it declines are left for ``_encoded``'s Python path."""
    misses = list(dict.fromkeys(r.spec for r in rules if (r.spec, family) not in _ENCODED))
    if not misses:
        return
    if len(_ENCODED) + len(misses) > CACHE_LIMIT:
        _ENCODED.clear()
    for spec, entry in zip(misses, encode_specs(misses, family), strict=False):
        if entry is not None:
            _ENCODED[(spec, family)] = [entry, None]  # identity: from the bytes when needed


def _encoded(spec: tuple, family: int, need_identity: bool) -> list:
    """[entry, identity | XtRule | None]: the identity is filled in on first need, from the
    parsed rule (Python path) or from the entry bytes (compiled path, nothing parsed)."""
    key = (spec, family)
    hit = _ENCODED.get(key)
    if hit is None:
        x = parse(spec, family)
        hit = list(encode_with_identity(x)) if need_identity else [encode(x), x]
        if len(_ENCODED) >= CACHE_LIMIT:
            _ENCODED.clear()
        _ENCODED[key] = hit
    elif need_identity and not isinstance(hit[1], tuple):
        # encoded earlier without it: the XtRule (Python path) or only the bytes wait there
        hit[1] = identity(hit[1]) if hit[1] is not None else identity_of_entry(hit[0], family)
    return hit


def _desired(table: Table, family: int, for_check: bool = False) -> list:
    """[(chain, identity, encoded entry, insert_at, Rule)] in application order.

    A commit needs the identity only of rules in built-in chains (to recognise our own
    there); ``check`` compares every chain, so it needs all of them."""
    _prime(table.rules, family)
    out = []
    for r in table.rules:
        need = for_check or not owned.is_our_chain(r.chain)
        entry, ident = _encoded(r.spec, family, need)
        out.append((r.chain, ident if need else None, entry, r.insert_at, r))
    return out


def _clear_ours(h: Handle, desired_ids: dict) -> int:
    """Flush our chains, drop our rules from built-in chains, delete our chains.
    Returns how many chains and built-in-chain rules went."""
    chains = h.chains()
    ours = [c for c in chains if owned.is_our_chain(c)]
    gone = len(ours)
    for c in ours:
        h.call(h.lib.flush_entries, f"flush {c}", c.encode())
    for c in chains:
        if c in ours or not h.lib.builtin(c.encode(), h.h):
            continue
        mine = desired_ids.get(c, set())
        rules = h.rules(c)
        for num in range(len(rules) - 1, -1, -1):
            ident, label, shape = rules[num]
            if owned.is_our_chain(label) or ident in mine or shape:
                h.call(h.lib.delete_num_entry, f"delete rule {num + 1} of {c}", c.encode(), num)
                gone += 1
    for c in ours:
        h.call(h.lib.delete_chain, f"delete chain {c}", c.encode())
    return gone


def _program(h: Handle, table: Table, desired: list, clear: bool = True) -> None:
    if clear:
        ids: dict = {}
        for chain, ident, *_ in desired:
            if ident is not None:  # rules of built-in chains
                ids.setdefault(chain, set()).add(ident)
        _clear_ours(h, ids)
    lib, hh = h.lib, h.h
    for c in table.chains:
        if not lib.create_chain(c.encode(), hh):
            raise lib.error(f"create chain {c}")
    # The hot loop of a commit: locals, a typed view of the entry bytes (no copy), and the
    # error text formatted only on failure.
    from_buffer, etype = lib.ffi.from_buffer, lib.entry_type
    append, insert = lib.append_entry, lib.insert_entry
    for chain, _, entry, insert_at, _ in desired:
        e = from_buffer(etype, entry)
        if insert_at is None:
            if not append(chain.encode(), e, hh):
                raise lib.error(f"append to {chain}")
        elif not insert(chain.encode(), e, insert_at - 1, hh):
            raise lib.error(f"insert into {chain}")


def _holds_ours(h: Handle) -> bool:
    chains = h.chains()
    if any(owned.is_our_chain(c) for c in chains):
        return True
    return any(owned.is_our_chain(label) or shape for c in chains for _, label, shape in h.rules(c))


def _with_stale_tables(work: list) -> list:
    """``work`` plus an empty target for every live table the new rule set does not name,
    so ours there (from a previous rule set) is removed in the same commit round."""
    named = {(f, t.name) for f, t, _ in work}
    extra: list[tuple[int, Table, list]] = [
        (f, Table(name, (), ()), []) for f in (4, 6) for name in sorted(live_tables(f)) if (f, name) not in named
    ]
    return list(work) + extra


def _tables_by_family(rs: RuleSet) -> list:
    return [(4, t) for t in rs.v4] + [(6, t) for t in rs.v6]


class IptcBackend:
    name = "iptc"

    def commit(self, rs: RuleSet) -> None:
        work = [(f, t, _desired(t, f)) for f, t in _tables_by_family(rs)]  # parse before touching
        with LOCK:
            for attempt in range(RETRIES):
                try:
                    self._commit_once(work)
                    return
                except NetfilterError as e:
                    if e.errno != EAGAIN or attempt == RETRIES - 1:
                        raise
                    log.warning(
                        "netfilter commit raced with another writer; retrying", backend=self.name, attempt=attempt + 1
                    )

    def _commit_once(self, work: list) -> None:
        dumps, committed, handles = {}, [], []
        try:
            for family, table, desired in _with_stale_tables(work):
                h = Handle(_lib(family), table.name)
                handles.append(h)
                if not desired and not _holds_ours(h):
                    continue  # a live table with nothing of ours: leave it alone
                dump = dumps[(family, table.name)] = h.dump()
                # An empty table (a fresh pod netns) holds nothing of ours: skip the clearing walk.
                _program(h, table, desired, clear=bool(dump[0] or dump[1]))
                h.dirty = True
            for h in handles:
                if h.dirty:
                    h.commit()
                    committed.append((h.lib.family, h.table))
        except NetfilterError:
            self._roll_back(committed, dumps)
            raise
        finally:
            for h in handles:
                h.close()

    def _roll_back(self, committed: list, dumps: dict) -> None:
        """Write back, table by table, what the tables held before this commit."""
        for family, table in reversed(committed):
            h = None
            try:
                h = Handle(_lib(family), table)
                h.load(dumps[(family, table)])
                h.commit()
            except NetfilterError as e:
                log.error("netfilter roll-back failed", table=table, family=family, error=str(e))
            finally:
                if h is not None:
                    h.close()

    def check(self, rs: RuleSet) -> list:
        diffs: list = []
        with LOCK:
            for family, table in _tables_by_family(rs):
                diffs += self._check_table(family, table)
        return diffs

    def _check_table(self, family: int, table: Table) -> list:
        where = f"IPv{family} {table.name}"
        if table.name not in live_tables(family):
            return [f"{where}: table not present (no rules)"]
        h = Handle(_lib(family), table.name)
        try:
            present = set(h.chains())
            return owned.compare(where, table, _desired(table, family, for_check=True), present, h.rules)
        finally:
            h.close()

    def remove(self, rs: RuleSet | None = None) -> None:
        """Remove our chains and rules from every live table (and ``rs``'s built-in-chain rules)."""
        with LOCK:
            for family in (4, 6):
                lib = _lib(family)
                by_name = {t.name: t for t in ((rs.v4 if family == 4 else rs.v6) if rs else ())}
                for name in sorted(live_tables(family)):
                    h = Handle(lib, name)
                    try:
                        ids: dict = {}
                        if name in by_name:
                            for chain, ident, *_ in _desired(by_name[name], family):
                                ids.setdefault(chain, set()).add(ident)
                        if _clear_ours(h, ids):  # nothing of ours: no commit at all
                            h.commit()
                    finally:
                        h.close()
