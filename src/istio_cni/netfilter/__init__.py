"""Netfilter backends behind one small protocol (contract 3).

A backend has ``name``, ``commit(rs)``, ``check(rs) -> list[str]`` and ``remove(rs=None)``,
and works on the netns the calling thread is in. ``apply``/``check``/``remove`` enter the
target netns (``_fastpath.Entered``: setns there and back, restore failure is fatal), pick
a backend, do the work and leave. Nothing here does network I/O while inside.

Choice per netns (``select_backend``):

1. ``ISTIO_CNI_NETFILTER_BACKEND`` in the environment, else the ``preferred`` argument
   (config), when it is not ``auto``: ``iptc``, ``nft``, ``restore`` (``restore-legacy`` /
   ``restore-nft``), ``dry-run``.
2. The netns already holds legacy x_tables rules -> ``iptc`` (adding nf_tables rules next to
   them would give two rule sets that both act on every packet).
3. It holds nf_tables tables (native or iptables-nft's) -> ``nft`` when the rule set carries
   the native-nftables form, else ``restore-nft`` (iptables-nft-restore).
4. Otherwise ``DEFAULT`` = ``iptc``. Why: a fresh pod netns holds nothing, so any backend is
   correct; libiptc is the fastest commit measured here (0.17 ms vs 0.25 ms libnftables and
   milliseconds for any exec), needs no exec, and its rules read back with
   ``iptables-legacy-save`` exactly as upstream's goldens spell them. A kernel built without
   legacy x_tables has no ``/proc/net/ip_tables_names``; there the default becomes ``nft``
   (or ``restore-nft`` without the nftables form).

The choice and its reason are logged at info level.
"""

from __future__ import annotations

from ..errors import NetfilterError
from ..log import log

DEFAULT = "iptc"
ENV = "ISTIO_CNI_NETFILTER_BACKEND"
NAMES = ("auto", "iptc", "nft", "restore", "restore-legacy", "restore-nft", "dry-run")


def make_backend(name: str, sink=None):
    if name == "iptc":
        from .iptc import IptcBackend

        return IptcBackend()
    if name == "nft":
        from .nft import NftBackend

        return NftBackend()
    if name in ("restore", "restore-legacy", "restore-nft"):
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


def choose(preferred: str = "auto", rs=None) -> tuple:
    """(backend name, reason) for the current netns."""
    import os

    env = os.environ.get(ENV)
    if env:
        return env, f"{ENV}={env}"
    if preferred not in NAMES:
        raise NetfilterError("unknown netfilter backend", f"{preferred!r} (choose one of {', '.join(NAMES)})")
    if preferred != "auto":
        return preferred, "configured"
    from .detect import legacy_rule_count, nft_tables

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
        return ("nft" if has_nft_form else "restore-nft"), "kernel has no legacy x_tables"
    return DEFAULT, "netns holds no rules: default"


def select_backend(preferred: str = "auto", rs=None, sink=None):
    """The backend for the netns the calling thread is in (see the module docstring)."""
    name, reason = choose(preferred, rs)
    log.info("netfilter backend selected", backend=name, reason=reason)
    return make_backend(name, sink)


def apply(netns_path: str, rs, preferred: str = "auto") -> str:
    """Enter ``netns_path``, commit ``rs`` (rules and policy routes), return the backend name."""
    from .._fastpath import Entered
    from . import routes

    with Entered(netns_path):
        backend = select_backend(preferred, rs)
        backend.commit(rs)
        routes.program(rs.routes)
    return backend.name


def check(netns_path: str, rs, preferred: str = "auto") -> list:
    from .._fastpath import Entered
    from . import routes

    with Entered(netns_path):
        backend = select_backend(preferred, rs)
        return backend.check(rs) + routes.missing(rs.routes)


def remove(netns_path: str, preferred: str = "auto", rs=None) -> None:
    """Remove everything we own from the netns (``rs`` adds its built-in-chain rules and
    policy routes to what is recognised as ours)."""
    from .._fastpath import Entered
    from . import routes

    with Entered(netns_path):
        for backend in _removers(preferred, rs):
            backend.remove(rs)
        if rs is not None:
            routes.remove(rs.routes)


def _removers(preferred: str, rs) -> list:
    """Explicit choice: that backend. Auto: every subsystem that may hold our rules."""
    import os

    name = os.environ.get(ENV) or preferred
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

    name = os.environ.get(ENV) or preferred
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
            from .._nf import lib
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

    checks = {"iptc": iptc_ok, "nft": nft_ok, "restore": restore_ok, "restore-legacy": restore_ok,
              "restore-nft": restore_ok, "dry-run": lambda: True}
    if name == "auto":
        ok = iptc_ok() or nft_ok()
    elif name in checks:
        ok = checks[name]()
    else:
        return f"unknown netfilter backend {name!r}"
    return "" if ok else "; ".join(problems)
