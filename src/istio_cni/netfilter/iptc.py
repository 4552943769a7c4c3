"""libiptc backend: legacy x_tables rules committed in-process, one transaction per table.

Per table: ``iptc_init`` (reads the kernel blob), flush or create our ``ISTIO_*`` chains, take
our old jumps/rules out of the built-in chains, append/insert the new rules, ``iptc_commit``
(one ``IPT_SO_SET_REPLACE``: the kernel swaps the whole table or nothing). Applying the same
rule set twice gives the same table; a different rule set replaces ours.

Across tables the kernel offers no transaction, so before committing we keep an untouched
handle per table (the snapshot) and, if a later table's commit fails, commit the snapshots of
the tables already written: the netns is left with the rules it had (an empty legacy table
that ``iptc_init`` instantiated stays instantiated: that is how x_tables works).

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
from .xtenc import encode, identity, identity_of

LOCK = _thread.allocate_lock()
EAGAIN = 11
RETRIES = 5
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}


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
        for name in ("init", "free", "is_chain", "first_chain", "next_chain", "first_rule",
                     "next_rule", "get_target", "builtin", "create_chain", "flush_entries",
                     "delete_chain", "append_entry", "insert_entry", "delete_num_entry", "commit",
                     "strerror"):
            setattr(self, name, getattr(lib, p + name))
        self.names_file = "ip_tables_names" if family == 4 else "ip6_tables_names"

    def error(self, what: str) -> NetfilterError:
        err = self.ffi.errno
        msg = self.ffi.string(self.strerror(err)).decode(errors="replace")
        return NetfilterError(f"libiptc (IPv{self.family}) {what} failed", f"{msg} (errno {err})",
                              errno=err)


_LIBS: dict = {}


def _lib(family: int) -> _Lib:
    if family not in _LIBS:
        _LIBS[family] = _Lib(family)
    return _LIBS[family]


def live_tables(family: int) -> set:
    """Tables instantiated in the current netns (reading them has no side effect)."""
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    try:
        with open(f"/proc/thread-self/net/{name}") as f:
            return set(f.read().split())
    except FileNotFoundError:
        return set()


class Handle:
    """One ``iptc_init`` handle: read helpers and the edits a commit is made of."""

    def __init__(self, lib: _Lib, table: str) -> None:
        self.lib = lib
        self.table = table
        self.h = lib.init(table.encode())
        if self.h == lib.ffi.NULL:
            raise lib.error(f"init of table {table}")

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
        """[(identity, target label)] of ``chain``'s rules in order."""
        out, lib, ffi = [], self.lib, self.lib.ffi
        bchain = chain.encode()
        e = lib.first_rule(bchain, self.h)
        while e != ffi.NULL:
            label = ffi.string(lib.get_target(e, self.h)).decode()
            raw = bytes(ffi.buffer(ffi.cast("char *", e), e.next_offset))
            ident = identity_of(raw[:lib.ip_size], raw[lib.entry_size:e.target_offset],
                                raw[e.target_offset:], label)
            out.append((ident, label))
            e = lib.next_rule(e, self.h)
        return out

    def call(self, fn, what: str, *args) -> None:
        if not fn(*args, self.h):
            raise self.lib.error(what)

    def commit(self) -> None:
        if not self.lib.commit(self.h):
            raise self.lib.error(f"commit of table {self.table}")

    def mark_changed(self) -> None:
        """libiptc skips the commit of an unchanged handle; a snapshot must be written."""
        tmp = b"ISTIO_CNI_RESTORE"
        self.call(self.lib.create_chain, "snapshot mark", tmp)
        self.call(self.lib.delete_chain, "snapshot mark", tmp)


def _desired(table: Table, family: int) -> list:
    """[(chain, rule identity, encoded entry, insert_at, text)] in application order."""
    out = []
    for r in table.rules:
        x = parse(r.spec, family)
        out.append((r.chain, identity(x), encode(x), r.insert_at, r.render()))
    return out


def _clear_ours(h: Handle, desired_ids: dict) -> None:
    """Flush our chains, drop our rules from built-in chains, delete our chains."""
    chains = h.chains()
    ours = [c for c in chains if owned.is_our_chain(c)]
    for c in ours:
        h.call(h.lib.flush_entries, f"flush {c}", c.encode())
    for c in chains:
        if c in ours or not h.lib.builtin(c.encode(), h.h):
            continue
        mine = desired_ids.get(c, set())
        rules = h.rules(c)
        for num in range(len(rules) - 1, -1, -1):
            ident, label = rules[num]
            if owned.is_our_chain(label) or ident in mine:
                h.call(h.lib.delete_num_entry, f"delete rule {num + 1} of {c}", c.encode(), num)
    for c in ours:
        h.call(h.lib.delete_chain, f"delete chain {c}", c.encode())


def _program(h: Handle, table: Table, desired: list) -> None:
    ids: dict = {}
    for chain, ident, *_ in desired:
        ids.setdefault(chain, set()).add(ident)
    _clear_ours(h, ids)
    for c in table.chains:
        h.call(h.lib.create_chain, f"create chain {c}", c.encode())
    ffi = h.lib.ffi
    for chain, _, entry, insert_at, _ in desired:
        e = ffi.cast(h.lib.entry_type, ffi.from_buffer(entry))
        if insert_at is None:
            h.call(h.lib.append_entry, f"append to {chain}", chain.encode(), e)
        else:
            h.call(h.lib.insert_entry, f"insert into {chain}", chain.encode(), e, insert_at - 1)


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
                    log.warning("netfilter commit raced with another writer; retrying",
                                backend=self.name, attempt=attempt + 1)

    def _commit_once(self, work: list) -> None:
        snapshots, committed, handles = {}, [], []
        try:
            for family, table, desired in work:
                lib = _lib(family)
                snapshots[(family, table.name)] = Handle(lib, table.name)
                h = Handle(lib, table.name)
                handles.append(h)
                _program(h, table, desired)
            for h in handles:
                h.commit()
                committed.append((h.lib.family, h.table))
        except NetfilterError:
            self._roll_back(committed, snapshots)
            raise
        finally:
            for h in handles + list(snapshots.values()):
                h.close()

    def _roll_back(self, committed: list, snapshots: dict) -> None:
        for key in reversed(committed):
            snap = snapshots[key]
            try:
                snap.mark_changed()
                snap.commit()
            except NetfilterError as e:
                log.error("netfilter roll-back failed", table=key[1], family=key[0], error=str(e))

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
            return owned.compare(where, table, _desired(table, family), present, h.rules)
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
                        before = h.chains()
                        ids: dict = {}
                        if name in by_name:
                            for chain, ident, *_ in _desired(by_name[name], family):
                                ids.setdefault(chain, set()).add(ident)
                        n_before = sum(len(h.rules(c)) for c in before)
                        _clear_ours(h, ids)
                        if h.chains() != before or sum(len(h.rules(c)) for c in h.chains()) != n_before:
                            h.commit()
                    finally:
                        h.close()
