"""Fallback backend: exec ``iptables-{legacy,nft}-restore --noflush`` inside the netns.

Used when libiptc cannot be (nf_tables netns with only the x_tables form of the rules) or
when chosen explicitly. One restore payload per family; ``iptables-restore`` commits each
``*table`` ... ``COMMIT`` block atomically. The payload replaces ours: ``:ISTIO_X - [0:0]``
creates or flushes each chain we want, ``-D`` lines take our old rules out of built-in
chains (read from ``*-save`` first), ``-F``/``-X`` drop ISTIO chains no longer wanted.

Lock: iptables-legacy-restore takes ``/run/xtables.lock`` (node-wide, it serialises every
pod). The rules are per netns, so we point ``XTABLES_LOCKFILE`` at a private file per
process and thread (removed afterwards); the kernel still refuses a replace based on a stale
table, and that failure is retried.
"""

from __future__ import annotations

from ..errors import NetfilterError
from ..log import log
from ..rules.model import RuleSet, Table
from . import owned
from .xt import XtParseError, XtRule, parse, parse_save_line

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Sequence

TIMEOUT = 20.0
RETRIES = 3


def _tool(variant: str, family: int, what: str) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{variant}-{what}"


def _run(argv: list, stdin: str = "") -> str:
    import _thread
    import os
    import subprocess

    env = dict(os.environ)
    env["XTABLES_LOCKFILE"] = f"/run/istio-cni-xtables-{os.getpid()}-{_thread.get_ident()}.lock"
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except FileNotFoundError:
        raise NetfilterError(f"{argv[0]} not found", "install iptables") from None
    except subprocess.TimeoutExpired:
        raise NetfilterError(f"{argv[0]} timed out after {TIMEOUT}s") from None
    finally:
        try:
            os.unlink(env["XTABLES_LOCKFILE"])
        except OSError:
            pass
    if p.returncode != 0:
        raise NetfilterError(f"{argv[0]} failed (exit {p.returncode})", p.stderr.strip())
    return p.stdout


def parse_save(text: str, family: int) -> dict:
    """``*-save`` output -> {table: {"chains": [...], "rules": {chain: [(XtRule|str, label, shape)]}}}.

    A rule our parser does not know (someone else's extension) is kept as its text: it can
    never equal one of ours, and its target label still says whether it jumps to our chain.
    """
    tables: dict = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("*"):
            name = line[1:].strip()
            cur = tables.setdefault(name, {"chains": [], "rules": {}, "name": name})
        elif line.startswith(":") and cur is not None:
            name = line[1:].split()[0]
            cur["chains"].append(name)
            cur["rules"].setdefault(name, [])
        elif line.startswith("-A ") and cur is not None:
            toks = line.split()
            label = toks[toks.index("-j") + 1] if "-j" in toks else ""
            rule: XtRule | str  # a line the parser does not know stays text (not ours)
            try:
                chain, rule = parse_save_line(line, family)
            except XtParseError:
                chain, rule = toks[1], line
            shape = owned.xt_shape(cur["name"], chain, rule)
            cur["rules"].setdefault(chain, []).append((rule, label, shape))
    return tables


def _desired(table: Table, family: int) -> list:
    return [(r.chain, parse(r.spec, family), None, r.insert_at, r) for r in table.rules]


def payload(table: Table, family: int, live: dict | None) -> str:
    """The restore block that replaces our part of ``table`` (``live``: its parse_save entry)."""
    desired = _desired(table, family)
    mine: dict = {}
    for chain, ident, *_ in desired:
        mine.setdefault(chain, []).append(ident)
    lines = [f"*{table.name}"]
    lines += [f":{c} - [0:0]" for c in table.chains]
    if live:
        for chain, rules in live["rules"].items():
            if owned.is_our_chain(chain):
                continue
            # by number, highest first, so earlier deletes do not shift later ones
            for num in range(len(rules), 0, -1):
                rule, label, shape = rules[num - 1]
                if owned.is_our_chain(label) or rule in mine.get(chain, ()) or shape:
                    lines.append(f"-D {chain} {num}")
        stale = [c for c in live["chains"] if owned.is_our_chain(c) and c not in table.chains]
        lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
    lines += [r.render() for r in table.rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class RestoreBackend:
    def __init__(self, variant: str = "legacy") -> None:
        if variant not in ("legacy", "nft"):
            raise ValueError(f"restore variant must be 'legacy' or 'nft', not {variant!r}")
        self.variant = variant
        self.name = f"restore-{variant}"

    def _save(self, family: int) -> dict:
        return parse_save(_run([_tool(self.variant, family, "save")]), family)

    def commit(self, rs: RuleSet) -> None:
        done: list = []  # (family, save before, table names written) per family tried
        for family, tables in ((4, rs.v4), (6, rs.v6)):
            # a family without tables still loses ours (IPv6 switched off since last time)
            attempt = _Attempt(family)
            try:
                self._commit_family(attempt, tables)
                done.append(attempt)
            except NetfilterError:
                # iptables-legacy-restore commits table by table: put back every table of
                # every family we touched, from the save taken just before.
                self._roll_back(done + [attempt])
                raise

    def _commit_family(self, attempt: _Attempt, tables: Sequence[Table]) -> None:
        family = attempt.family
        for n in range(RETRIES):
            attempt.before = _run([_tool(self.variant, family, "save")])
            live = parse_save(attempt.before, family)
            blocks = [payload(t, family, live.get(t.name)) for t in tables]
            attempt.tables = {t.name for t in tables}
            for name, lt in live.items():  # ours in tables the new rule set does not name
                if name not in attempt.tables and _holds_ours(lt):
                    blocks.append(payload(Table(name, (), ()), family, lt))
                    attempt.tables.add(name)
            if not blocks:
                return
            try:
                _run([_tool(self.variant, family, "restore"), "--noflush"], "".join(blocks))
                return
            except NetfilterError as e:
                if "temporarily unavailable" not in e.details or n == RETRIES - 1:
                    raise
                log.warning("restore raced with another writer; retrying", attempt=n + 1)

    def _roll_back(self, attempts: list) -> None:
        for a in attempts:
            if a.before is None:
                continue
            blocks = _blocks(a.before, a.tables)
            if not blocks:
                continue
            try:  # without --noflush: each listed table becomes exactly what it was
                _run([_tool(self.variant, a.family, "restore")], blocks)
            except NetfilterError as e:
                log.error("restore roll-back failed", family=a.family, error=str(e))

    def check(self, rs: RuleSet) -> list:
        diffs: list = []
        for family, tables in ((4, rs.v4), (6, rs.v6)):
            if not tables:
                continue
            live = self._save(family)
            for t in tables:
                where = f"IPv{family} {t.name}"
                if t.name not in live:
                    diffs.append(f"{where}: table not present (no rules)")
                    continue
                lt = live[t.name]
                diffs += owned.compare(
                    where, t, _desired(t, family), set(lt["chains"]), lambda c, lt=lt: lt["rules"].get(c, [])
                )
        return diffs

    def remove(self, rs: RuleSet | None = None) -> None:
        for family in (4, 6):
            live = self._save(family)
            wanted = {t.name: t for t in ((rs.v4 if family == 4 else rs.v6) if rs else ())}
            text = ""
            for name, lt in live.items():
                t = wanted.get(name, Table(name, (), ()))
                body = (
                    payload(Table(name, (), ()), family, lt)
                    if name not in wanted
                    else _removal_with_rules(t, family, lt)
                )
                if body.count("\n") > 2:  # more than "*table" and "COMMIT"
                    text += body
            if text:
                _run([_tool(self.variant, family, "restore"), "--noflush"], text)


def _removal_with_rules(table: Table, family: int, live: dict) -> str:
    """Remove ours, including ``table``'s built-in-chain rules that equal live ones."""
    body = payload(table, family, live)
    keep = [ln for ln in body.splitlines() if not ln.startswith((":", "-A ", "-I "))]
    stale = [c for c in table.chains if c in live["chains"]]
    keep[-1:-1] = [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
    return "\n".join(keep) + "\n"


class _Attempt:
    """One family's commit: the save taken before it and the tables its payload names."""

    __slots__ = ("family", "before", "tables")

    def __init__(self, family: int) -> None:
        self.family = family
        self.before: str | None = None
        self.tables: set = set()


def _holds_ours(live: dict) -> bool:
    return any(owned.is_our_chain(c) for c in live["chains"]) or any(
        owned.is_our_chain(label) or shape for rules in live["rules"].values() for _, label, shape in rules
    )


def _blocks(save_text: str, names: set) -> str:
    """The ``*table`` ... ``COMMIT`` blocks of ``save_text`` for tables in ``names``; a table
    the save did not have comes back empty (``*t`` + ``COMMIT`` flushes it)."""
    out, keep = [], False
    present = {ln[1:].strip() for ln in save_text.splitlines() if ln.startswith("*")}
    for name in sorted(names - present):
        out += [f"*{name}", "COMMIT"]
    for line in save_text.splitlines():
        if line.startswith("*"):
            keep = line[1:].strip() in names
        if keep and not line.startswith("#"):
            out.append(line)
        if line == "COMMIT":
            keep = False
    return "\n".join(out) + "\n" if out else ""
