"""Netfilter backends behind one small protocol (contract 3).

A backend has ``name``, ``commit(rs)``, ``check(rs) -> list[str]`` and ``remove(rs=None)``,
and works on the netns the calling thread is in. ``apply``/``check``/``remove`` enter the
target netns (``_fastpath.Entered``: setns there and back, restore failure is fatal), pick
a backend, do the work and leave. Nothing here does network I/O while inside.

Choice per netns (``select_backend``):

1. ``ISTIO_CNI_NETFILTER_BACKEND`` in the environment, else the ``preferred`` argument
   (config), when it is not ``auto``: ``iptc``, ``nft``, ``restore-legacy``, ``restore-nft``,
   ``restore`` (the exec fallback, variant by detection: nft when the netns holds nf_tables
   tables and no legacy rules), ``dry-run``.
2. The netns already holds legacy x_tables rules -> ``iptc`` (adding nf_tables rules next to
   them would give two rule sets that both act on every packet).
3. It holds nf_tables tables (native or iptables-nft's) -> ``nft`` when the rule set carries
   the native-nftables form, else ``restore-nft`` (iptables-nft-restore).
4. Otherwise ``DEFAULT`` = ``iptc``. Why: a fresh pod netns holds nothing, so any backend is
   correct; libiptc is the fastest commit measured here (benchmarks/bench_netfilter.py:
   about 1.0 ms cold, 0.5 ms with the encoding cache warm, against about 2 ms for
   libnftables plus an RCU grace period of several ms the kernel makes the closing of its
   netlink socket wait for), needs no exec, and its rules read back with
   ``iptables-legacy-save`` exactly as upstream's goldens spell them. A kernel built without
   legacy x_tables has no ``/proc/net/ip_tables_names``; there the default becomes ``nft``
   (or ``restore-nft`` without the nftables form).

The choice and its reason are logged at info level. Under ``auto`` a commit that libiptc
cannot start because the kernel lacks a legacy table (``nat`` on kernels built without legacy
x_tables NAT) goes through nf_tables instead, logged with the reason (``commit``).

Concurrency: no backend takes the node-wide ``/run/xtables.lock`` (it would serialise every
pod's ADD on the node, and has hung upstream for minutes); each pod's rules live in its own
netns, and the kernel itself refuses a table replace or an nf_tables batch based on stale
state (EAGAIN), which the backends retry a bounded number of times. Separate plugin
processes share nothing and run in parallel. Inside one process (the node agent) libiptc is
not thread-safe, so ``iptc.LOCK`` serialises its calls; setns affects only the calling
thread, so other threads keep working in their own namespaces meanwhile.
"""

from __future__ import annotations

from .. import getenv
from ..backends import NAMES, RESTORE_VARIANTS
from ..errors import NetfilterError
from ..log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import Protocol, TextIO

    from ..rules.model import RuleSet

    class Backend(Protocol):
        """What every backend (iptc, nft, restore-*, dry-run) offers."""

        @property
        def name(self) -> str: ...
        def commit(self, rs: RuleSet) -> None: ...
        def check(self, rs: RuleSet) -> list: ...
        def remove(self, rs: RuleSet | None = None) -> None: ...


DEFAULT = "iptc"
ENV = "ISTIO_CNI_NETFILTER_BACKEND"


def make_backend(name: str, sink: TextIO | None = None, long_lived: bool = False) -> Backend:
    """``long_lived``: the caller (node agent) outlives the commit, so slow cleanup such as
    freeing the libnftables context may happen on a background thread."""
    if name == "iptc":
        from .iptc import IptcBackend

        return IptcBackend()
    if name == "nft":
        from .nft import NftBackend

        return NftBackend(defer_close=long_lived)
    if name == "restore" or name in RESTORE_VARIANTS:
        from .restore import RestoreBackend

        return RestoreBackend("nft" if name == "restore-nft" else "legacy")
    if name == "dry-run":
        import sys

        from .dryrun import DryRunBackend

        return DryRunBackend(sink if sink is not None else sys.stderr)
    raise NetfilterError("unknown netfilter backend", f"{name!r} (choose one of {', '.join(NAMES)})")


def _legacy_available() -> bool:
    try:
        open("/proc/thread-self/net/ip_tables_names").close()
        return True
    except OSError:
        return False


def choose(preferred: str = "auto", rs: RuleSet | None = None) -> tuple[str, str]:
    """(backend name, reason) for the current netns."""
    env = getenv(ENV)
    if env:
        return env, f"{ENV}={env}"
    if preferred not in NAMES:
        raise NetfilterError("unknown netfilter backend", f"{preferred!r} (choose one of {', '.join(NAMES)})")
    if preferred not in ("auto", "restore"):
        return preferred, "configured"
    from .detect import legacy_rule_count, nft_tables

    if preferred == "restore":
        legacy = _legacy_available() and legacy_rule_count()
        variant = "restore-nft" if not legacy and nft_tables() else "restore-legacy"
        return variant, "configured: restore (variant by the rules the netns holds)"

    has_nft_form = bool(rs is not None and rs.nft)
    if _legacy_available():
        n = legacy_rule_count()
        if n:
            return "iptc", f"netns holds {n} legacy x_tables rules"
    tables = nft_tables()
    if tables:
        shown = " ".join(f"{f} {t}" for f, t in tables[:4])
        if has_nft_form:
            return "nft", f"netns holds nf_tables tables ({shown})"
        return "restore-nft", f"netns holds nf_tables tables ({shown}); rule set is x_tables only"
    if not _legacy_available():
        return _nft_choice(rs), "kernel has no legacy x_tables"
    return DEFAULT, "netns holds no rules: default"


def select_backend(
    preferred: str = "auto", rs: RuleSet | None = None, sink: TextIO | None = None, long_lived: bool = False
) -> Backend:
    """The backend for the netns the calling thread is in (see the module docstring)."""
    name, reason = choose(preferred, rs)
    log.info("netfilter backend selected", backend=name, reason=reason)
    return make_backend(name, sink, long_lived)


def _nft_choice(rs: RuleSet | None) -> str:
    """The nf_tables backend for ``rs``: native nft when it carries that form."""
    return "nft" if rs is not None and rs.nft else "restore-nft"


def commit(rs: RuleSet, preferred: str = "auto", *, long_lived: bool = False) -> Backend:
    """Commit ``rs``'s rules in the current netns; returns the backend that did it.

    Under ``auto`` a legacy table that the kernel does not offer (``iptc.TableUnavailable``:
    kernels built without legacy x_tables NAT, where ``/proc/net/ip_tables_names`` may still
    exist for the filter table) makes the commit go through nf_tables instead, with one
    warning naming why: libiptc fails at ``iptc_init``, before any table is replaced, so the
    netns is unchanged. An explicit backend (config or ``ISTIO_CNI_NETFILTER_BACKEND``)
    fails closed with its own error."""
    backend = select_backend(preferred, rs, long_lived=long_lived)
    try:
        backend.commit(rs)
    except NetfilterError as e:
        if backend.name != "iptc" or not _auto(preferred):
            raise
        from .iptc import TableUnavailable  # loaded already: the iptc backend just ran

        if not isinstance(e, TableUnavailable):
            raise
        fallback = _nft_choice(rs)
        log.warning(
            "legacy x_tables unusable in this netns; committing through nf_tables", backend=fallback, reason=str(e)
        )
        backend = make_backend(fallback, long_lived=long_lived)
        backend.commit(rs)
    return backend


def _auto(preferred: str) -> bool:
    return not getenv(ENV) and preferred == "auto"


def apply(netns_path: str, rs: RuleSet, preferred: str = "auto", *, long_lived: bool = False) -> str:
    """Enter ``netns_path``, commit ``rs`` (rules and policy routes), return the backend name.

    ``long_lived=True`` for the node agent (see ``make_backend``)."""
    from .._fastpath import Entered

    with Entered(netns_path):
        backend = commit(rs, preferred, long_lived=long_lived)
        # TPROXY / IPv6 only: netlink stays off the common path; a dry run changes nothing
        # (upstream's ConfigureRoutes is skipped in dry-run mode too).
        if (rs.routes or rs.lo_addresses) and backend.name != "dry-run":
            from . import routes

            routes.program(rs.routes, rs.lo_addresses)
    return backend.name


def check(netns_path: str, rs: RuleSet, preferred: str = "auto") -> list:
    from .._fastpath import Entered

    with Entered(netns_path):
        backend = select_backend(preferred, rs)
        diffs = backend.check(rs)
        if diffs and backend.name == "iptc" and _auto(preferred):
            diffs = _check_after_fallback(rs, diffs)
        if rs.routes or rs.lo_addresses:
            from . import routes

            diffs += routes.missing(rs.routes, rs.lo_addresses)
        return diffs


def _check_after_fallback(rs: RuleSet, iptc_diffs: list) -> list:
    """Under ``auto`` an ADD into a netns holding legacy rules commits through nf_tables when
    the kernel lacks a legacy table (``commit``); CHECK then accepts rules found complete in
    nf_tables, and otherwise reports what libiptc found missing."""
    from .detect import nft_tables

    if not nft_tables():
        return iptc_diffs
    return [] if not make_backend(_nft_choice(rs)).check(rs) else iptc_diffs


def remove(netns_path: str, preferred: str = "auto", rs: RuleSet | None = None) -> None:
    """Remove everything we own from the netns (``rs`` adds its built-in-chain rules and
    policy routes to what is recognised as ours)."""
    from .._fastpath import Entered

    with Entered(netns_path):
        for backend in _removers(preferred, rs):
            backend.remove(rs)
        if rs is not None and rs.routes:
            from . import routes

            routes.remove(rs.routes)


def _removers(preferred: str, rs: RuleSet | None) -> list[Backend]:
    """Explicit choice: that backend. Auto: every subsystem that may hold our rules."""
    name = getenv(ENV) or preferred
    if name != "auto":
        return [make_backend(name)]
    from .detect import legacy_rule_count, nft_tables

    out = []
    if _legacy_available() and legacy_rule_count():
        out.append(make_backend("iptc"))
    tables = nft_tables()
    if any(f == "inet" for f, _ in tables):
        out.append(make_backend("nft"))
    if any(f in ("ip", "ip6") for f, _ in tables):
        out.append(make_backend("restore-nft"))
    log.info("netfilter remove", backends=[b.name for b in out])
    return out


def usable(preferred: str = "auto") -> str:
    """'' when a backend for ``preferred`` can work on this node, else why not (STATUS, code 50).

    Checked from the host netns without changing anything: the compiled bindings load, the
    kernel exposes legacy x_tables (for iptc) or a libnftables context can be created (nft),
    or the restore binaries exist (restore)."""
    import os
    import shutil

    name = getenv(ENV) or preferred
    problems = []

    def iptc_ok() -> bool:
        try:
            from .. import _nf  # noqa: F401
        except ImportError as e:
            problems.append(f"libiptc bindings: {e}")
            return False
        if not os.path.exists("/proc/net/ip_tables_names"):
            problems.append("kernel has no legacy x_tables (/proc/net/ip_tables_names missing)")
            return False
        return True

    def nft_ok() -> bool:
        try:
            from .._nft import lib
        except ImportError as e:
            problems.append(f"libnftables bindings: {e}")
            return False
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            problems.append("libnftables: nft_ctx_new failed")
            return False
        lib.nft_ctx_free(ctx)
        return True

    def restore_ok() -> bool:
        want = "iptables-nft-restore" if name == "restore-nft" else "iptables-legacy-restore"
        if shutil.which(want):
            return True
        problems.append(f"{want} not on PATH")
        return False

    checks = {"iptc": iptc_ok, "nft": nft_ok, "restore": restore_ok, "dry-run": lambda: True}
    checks.update(dict.fromkeys(RESTORE_VARIANTS, restore_ok))
    if name == "auto":
        ok = iptc_ok() or nft_ok()
    elif name in checks:
        ok = checks[name]()
    else:
        return f"unknown netfilter backend {name!r}"
    return "" if ok else "; ".join(problems)
