"""Fallback backend: exec ``iptables-{legacy,nft}-restore --noflush`` inside the netns.

Used when libiptc cannot be (nf_tables netns with only the x_tables form of the rules) or
when chosen explicitly. One restore payload per family; ``iptables-restore`` commits each
``*table`` ... ``COMMIT`` block atomically. The payload replaces ours: ``:ISTIO_X - [0:0]``
creates or flushes each chain we want, ``-D`` lines take our old rules out of built-in
chains (read from ``*-save`` first), ``-F``/``-X`` drop ISTIO chains no longer wanted.

Lock: iptables-legacy-restore takes ``/run/xtables.lock`` (node-wide, it serialises every
pod). The rules are per netns, so we point ``XTABLES_LOCKFILE`` at a private file per call;
the kernel still refuses a replace based on a stale table, and that failure is retried.
"""

from __future__ import annotations

from ..errors import NetfilterError
from ..log import log
from ..rules.model import RuleSet, Table
from . import owned
from .xt import XtParseError, parse, parse_save_line

TIMEOUT = 20.0
RETRIES = 3


def _tool(variant: str, family: int, what: str) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{variant}-{what}"


def _run(argv: list, stdin: str = "") -> str:
    import os
    import subprocess

    env = dict(os.environ)
    env["XTABLES_LOCKFILE"] = f"/run/istio-cni-xtables-{os.getpid()}.lock"
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                           env=env)
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
    """``*-save`` output -> {table: {"chains": [names], "rules": {chain: [(XtRule|str, label)]}}}.

    A rule our parser does not know (someone else's extension) is kept as its text: it can
    never equal one of ours, and its target label still says whether it jumps to our chain.
    """
    tables: dict = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), {"chains": [], "rules": {}})
        elif line.startswith(":") and cur is not None:
            name = line[1:].split()[0]
            cur["chains"].append(name)
            cur["rules"].setdefault(name, [])
        elif line.startswith("-A ") and cur is not None:
            toks = line.split()
            label = toks[toks.index("-j") + 1] if "-j" in toks else ""
            try:
                chain, rule = parse_save_line(line, family)
            except XtParseError:
                chain, rule = toks[1], line
            cur["rules"].setdefault(chain, []).append((rule, label))
    return tables


def _desired(table: Table, family: int) -> list:
    return [(r.chain, parse(r.spec, family), None, r.insert_at, r.render()) for r in table.rules]


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
                rule, label = rules[num - 1]
                if owned.is_our_chain(label) or rule in mine.get(chain, ()):
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
        done: list = []  # (family, save text before) of families already written
        for family, tables in ((4, rs.v4), (6, rs.v6)):
            if not tables:
                continue
            try:
                done.append((family, self._commit_family(family, tables)))
            except NetfilterError as e:
                # iptables-legacy-restore commits table by table: put back every table of
                # every family we touched, from the save taken just before.
                names = {4: {t.name for t in rs.v4}, 6: {t.name for t in rs.v6}}
                self._roll_back(done + [(family, getattr(e, "before", None))], names)
                raise

    def _commit_family(self, family: int, tables) -> str:
        for attempt in range(RETRIES):
            before = _run([_tool(self.variant, family, "save")])
            live = parse_save(before, family)
            text = "".join(payload(t, family, live.get(t.name)) for t in tables)
            try:
                _run([_tool(self.variant, family, "restore"), "--noflush"], text)
                return before
            except NetfilterError as e:
                if "temporarily unavailable" not in e.details or attempt == RETRIES - 1:
                    e.before = before
                    raise
                log.warning("restore raced with another writer; retrying", attempt=attempt + 1)
        raise AssertionError("unreachable")

    def _roll_back(self, done: list, names: dict) -> None:
        for family, before in done:
            if before is None:
                continue
            blocks = _blocks(before, names[family])
            if not blocks:
                continue
            try:  # without --noflush: each listed table becomes exactly what it was
                _run([_tool(self.variant, family, "restore")], blocks)
            except NetfilterError as e:
                log.error("restore roll-back failed", family=family, error=str(e))

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
                diffs += owned.compare(where, t, _desired(t, family), set(lt["chains"]),
                                       lambda c, lt=lt: lt["rules"].get(c, []))
        return diffs

    def remove(self, rs: RuleSet | None = None) -> None:
        for family in (4, 6):
            live = self._save(family)
            wanted = {t.name: t for t in ((rs.v4 if family == 4 else rs.v6) if rs else ())}
            text = ""
            for name, lt in live.items():
                t = wanted.get(name, Table(name, (), ()))
                body = payload(Table(name, (), ()), family, lt) if name not in wanted else \
                    _removal_with_rules(t, family, lt)
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
