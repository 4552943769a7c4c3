"""libnftables backend: the native-nftables rule set in one kernel transaction.

All of ``RuleSet.nft`` (the inet ``istio-proxy-*`` tables, rendered as upstream's ``nft -f``
text by ``NftTable.render``) goes to ``nft_run_cmd_from_buffer`` as one buffer, which
libnftables sends as one netlink batch: every table changes or none does. Each table is
deleted and re-added inside that batch (``add``/``delete``/``add``), so chains or rules of a
previous rule set never linger, and tables of ours the new set does not name are deleted.

Each table carries a comment ``istio-cni <digest>`` of the text it was built from, so
``check`` can tell "ours, current" from "ours, from another rule set"; it also compares the
chains (hooks, types, priorities) and the number of rules per chain with the live table.
nft re-spells rules when listing them (``meta l4proto tcp tcp dport`` becomes ``tcp dport``,
marks turn hex), so rule text is not compared.

The libnftables context opens its netlink socket when created, so one is created per
operation, inside the target netns. Closing that socket right after a commit is slow: the
kernel's netlink release handler flushes nf_tables' (global) transaction-destroy work, which
waits for an RCU grace period (measured 1-10 ms here, growing with load). The per-exec
plugin pays that at close or at exit either way (so does ``nft -f``); a long-lived caller
(the node agent) passes ``defer_close=True`` and the context is freed on a short-lived
background thread, off the ADD's critical path.
"""

from __future__ import annotations

import _thread

from ..errors import NetfilterError
from ..rules.model import NftTable, RuleSet

OURS = "istio-proxy-"
COMMENT = "istio-cni "
RETRIES = 3


def _is_race(e: NetfilterError) -> bool:
    return "Resource temporarily unavailable" in e.details or "Interrupted system call" in e.details


def digest(table: NftTable) -> str:
    try:  # the builtin module: hashlib's import costs milliseconds on the ADD path
        from _sha2 import sha256
    except ImportError:
        from _sha256 import sha256
    return sha256(table.render().encode()).hexdigest()[:32]


def transaction_text(rs: RuleSet, existing: list) -> str:
    """The one buffer that replaces our tables with ``rs.nft``."""
    names = {t.name for t in rs.nft}
    lines = []
    for name in existing:
        if name.startswith(OURS) and name not in names:
            lines.append(f"delete table inet {name}")
    for t in rs.nft:
        lines += [
            f"add table inet {t.name}",
            f"delete table inet {t.name}",
            f'add table inet {t.name} {{ comment "{COMMENT}{digest(t)}" ; }}',
        ]
        lines.append(t.render())
    return "\n".join(lines) + "\n"


LOCK = _thread.allocate_lock()


class Nft:
    """A libnftables context with buffered output and error text.

    One context at a time per process (``LOCK``, held from creation to ``close``): contexts
    are independent in libnftables 1.0.x, but its parser and caches have not been audited
    for concurrent use, and the node agent commits from several threads. Freeing (the slow
    part, see the module docstring) happens after the lock is released.
    """

    def __init__(self) -> None:
        from .._nft import ffi, lib

        self.ffi, self.lib = ffi, lib
        LOCK.acquire()
        self.ctx = lib.nft_ctx_new(lib.NFT_CTX_DEFAULT)
        if self.ctx == ffi.NULL:
            LOCK.release()
            raise NetfilterError("libnftables: nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, text: str, what: str) -> str:
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        if rc != 0:
            err = self.ffi.string(self.lib.nft_ctx_get_error_buffer(self.ctx)).decode(errors="replace")
            raise NetfilterError(f"libnftables {what} failed", err.strip())
        return self.ffi.string(self.lib.nft_ctx_get_output_buffer(self.ctx)).decode(errors="replace")

    def close(self, defer: bool = False) -> None:
        if self.ctx is None:
            return
        ctx, self.ctx = self.ctx, None
        LOCK.release()
        if defer:  # nft_ctx_free is a cffi call: it runs without the GIL
            _thread.start_new_thread(self.lib.nft_ctx_free, (ctx,))
        else:
            self.lib.nft_ctx_free(ctx)

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_tables(n: Nft) -> list:
    """[(family, name)] of every nf_tables table in the netns (iptables-nft's included)."""
    out = []
    for line in n.run("list tables", "list tables").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            out.append((parts[1], parts[2]))
    return out


def _our_tables(n: Nft) -> list:
    return [name for fam, name in list_tables(n) if fam == "inet" and name.startswith(OURS)]


def parse_listing(text: str) -> dict:
    """``nft list table`` text -> {"comment": str|None, "chains": {name: (hook line, n rules)}}."""
    comment = None
    chains: dict = {}
    cur = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("table ") or line == "}":
            if line == "}":
                cur = None
            continue
        if line.startswith("comment ") and cur is None:
            comment = line[len("comment ") :].strip('"')
        elif line.startswith("chain "):
            cur = line.split()[1]
            chains[cur] = [None, 0]
        elif cur is not None and line.startswith("type "):
            chains[cur][0] = line.split(";")[0]
        elif cur is not None:
            chains[cur][1] += 1
    return {"comment": comment, "chains": {k: tuple(v) for k, v in chains.items()}}


def _expected_chains(t: NftTable) -> dict:
    counts = {c.name: 0 for c in t.chains}
    for s in t.statements:
        toks = s.split()
        if len(toks) > 4 and toks[1] == "rule":
            counts[toks[4]] = counts.get(toks[4], 0) + 1
    out = {}
    for c in t.chains:
        hook = (c.type, c.hook, c.priority) if c.hook is not None else None  # base chains carry all three
        out[c.name] = (hook, counts[c.name])
    return out


def _hook_of(line: str | None) -> tuple[str, str, int] | None:
    """'type nat hook prerouting priority dstnat' -> ('nat', 'prerouting', -100)."""
    if line is None:
        return None
    t = line.split()
    prio = t[5] if len(t) > 5 else "0"
    named = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
    if prio in named:
        value = named[prio]
    else:
        base, sign, off = prio.partition("+") if "+" in prio else prio.partition("-")
        value = named[base] + (int(off) if sign == "+" else -int(off)) if base in named else int(prio)
    return (t[1], t[3], value)


class NftBackend:
    name = "nft"

    def __init__(self, defer_close: bool = False) -> None:
        self.defer_close = defer_close

    def commit(self, rs: RuleSet) -> None:
        if not rs.nft:
            raise NetfilterError(
                "nft backend: the rule set has no nftables tables",
                "build it with the nftables builder or choose an x_tables backend",
            )
        n = Nft()
        try:
            for attempt in range(RETRIES):
                try:  # the table list is read in the same context the batch is sent from
                    n.run(transaction_text(rs, _our_tables(n)), "commit")
                    return
                except NetfilterError as e:
                    # another writer changed the ruleset between our read and the batch
                    if not _is_race(e) or attempt == RETRIES - 1:
                        raise
        finally:
            n.close(defer=self.defer_close)

    def check(self, rs: RuleSet) -> list:
        diffs: list = []
        with Nft() as n:
            live = set(_our_tables(n))
            for t in rs.nft:
                if t.name not in live:
                    diffs.append(f"inet {t.name}: table missing")
                    continue
                diffs += self._check_table(n, t)
            for name in sorted(live - {t.name for t in rs.nft}):
                diffs.append(f"inet {name}: unexpected table")
        return diffs

    def _check_table(self, n: Nft, t: NftTable) -> list:
        where = f"inet {t.name}"
        got = parse_listing(n.run(f"list table inet {t.name}", "list table"))
        diffs = []
        if got["comment"] != COMMENT + digest(t):
            diffs.append(f"{where}: programmed from a different rule set (comment {got['comment']!r})")
        want = _expected_chains(t)
        for name, (hook, count) in want.items():
            if name not in got["chains"]:
                diffs.append(f"{where}: chain {name} missing")
                continue
            live_hook, live_count = got["chains"][name]
            if _hook_of(live_hook) != hook:
                diffs.append(f"{where}: chain {name} is {live_hook!r}, expected {hook}")
            if live_count != count:
                diffs.append(f"{where}: chain {name} has {live_count} rules, expected {count}")
        for name in sorted(set(got["chains"]) - set(want)):
            diffs.append(f"{where}: unexpected chain {name}")
        return diffs

    def remove(self, rs: RuleSet | None = None) -> None:
        with Nft() as n:
            ours = _our_tables(n)
            if ours:
                n.run("".join(f"delete table inet {name}\n" for name in ours), "remove")
