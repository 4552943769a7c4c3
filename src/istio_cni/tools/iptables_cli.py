"""``istio-iptables``: upstream's command line, flags and environment variables included.

Accepts the flags of upstream ``tools/istio-iptables`` (short and long spelling) and, like
upstream's viper binding, reads each flag's environment variable (the long name upper-cased,
``-`` -> ``_``; ``--envoy-port`` has none) when the flag is not given. ``--dry-run`` prints
the restore payloads; otherwise the rules are committed through ``istio_cni.netfilter``.

As upstream does, IPv6 is switched on by the addresses of the current network namespace
(the first global address is IPv6, or with ``--dual-stack`` any global IPv6 address) and,
with ``--redirect-dns`` but not ``--capture-all-dns``, the DNS servers come from
``/etc/resolv.conf``.

Not on the per-pod path, so argparse and subprocess are fine here.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import TextIO

from ..decide import parse_go_bool
from ..rules.config import ConfigError, RedirectConfig
from ..rules.model import RuleSet

# (long flag, short flag, RedirectConfig field or None, help). String-valued.
STRING_FLAGS = (
    ("envoy-port", "p", "proxy_port", "outbound capture port (default 15001)"),
    ("inbound-capture-port", "z", "inbound_capture_port", "inbound capture port (default 15006)"),
    ("inbound-tunnel-port", "e", "inbound_tunnel_port", "HBONE tunnel port (default 15008)"),
    ("proxy-uid", "u", "proxy_uids", "proxy UIDs, comma list (default: uid of $ENVOY_USER or 1337)"),
    ("proxy-gid", "g", "proxy_gids", "proxy GIDs, comma list (default: same as -u)"),
    ("istio-inbound-interception-mode", "m", "interception_mode", "REDIRECT or TPROXY"),
    ("istio-inbound-ports", "b", "inbound_ports_include", "inbound ports to capture, '*' for all"),
    ("istio-local-exclude-ports", "d", "inbound_ports_exclude", "inbound ports excluded from '*'"),
    ("istio-exclude-interfaces", "c", "exclude_interfaces", "NICs never captured"),
    ("istio-service-cidr", "i", "outbound_ip_ranges_include", "outbound CIDRs to capture, '*' for all"),
    ("istio-service-exclude-cidr", "x", "outbound_ip_ranges_exclude", "outbound CIDRs never captured"),
    ("istio-outbound-ports", "q", "outbound_ports_include", "outbound ports always captured"),
    ("istio-local-outbound-ports-exclude", "o", "outbound_ports_exclude", "outbound ports never captured"),
    ("kube-virt-interfaces", "k", "reroute_virtual_interfaces", "VM NICs whose inbound is outbound"),
    ("istio-inbound-tproxy-mark", "t", "inbound_tproxy_mark", "TPROXY mark (default 1337)"),
    ("istio-inbound-tproxy-route-table", "r", "inbound_tproxy_route_table", "TPROXY route table (default 133)"),
    ("iptables-probe-port", None, None, "validation probe port (default 15002)"),
    ("probe-timeout", None, None, "validation timeout (default 5s)"),
    ("network-namespace", None, None, "netns path (or name under /run/netns) to program"),
    ("force-iptables-binary", None, None, "'legacy' or 'nft': force that x_tables flavour"),
    ("log_output_level", None, None, "accepted for compatibility"),
    ("log_target", None, None, "accepted for compatibility"),
    ("log_caller", None, None, "accepted for compatibility"),
    ("log_stacktrace_level", None, None, "accepted for compatibility"),
)

# (long flag, short flag, RedirectConfig field or None, env var giving the default).
BOOL_FLAGS = (
    ("dry-run", "n", None, None),
    ("redirect-dns", None, "redirect_dns", "ISTIO_META_DNS_CAPTURE"),
    ("capture-all-dns", None, "capture_all_dns", None),
    ("drop-invalid", None, "drop_invalid", "INVALID_DROP"),
    ("dual-stack", None, "dual_stack", "ISTIO_DUAL_STACK"),
    ("skip-rule-apply", None, None, None),
    ("run-validation", None, None, None),
    ("cni-mode", None, None, None),
    ("reconcile", None, None, None),
    ("cleanup-only", None, None, None),
    ("force-apply", None, None, None),
    ("native-nftables", None, None, None),
    ("restore-format", "f", None, None),
    ("log_as_json", None, None, None),
)

# Env-only knobs (upstream reads these without a flag).
ENV_ONLY = {
    "owner_groups_include": ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
    "owner_groups_exclude": ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
    "host_ipv4_loopback_cidr": ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
}
NO_ENV = {"envoy-port"}  # upstream binds no environment variable to -p
DEFAULT_PROXY_UID = "1337"


class UsageError(Exception):
    """Bad flag or environment value: exit 2 with this message."""


def env_name(flag: str) -> str:
    return flag.upper().replace("-", "_")


def parse_bool(text: str, what: str) -> bool:
    """Go's strconv.ParseBool, which is what upstream's flags accept."""
    value = parse_go_bool(text)
    if value is not None:
        return value
    raise UsageError(f"{what}: invalid boolean {text!r} (use true or false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="istio-iptables",
        description="Set up the Istio sidecar's traffic redirection (upstream-compatible).",
    )
    for flag, short, _field, help_ in STRING_FLAGS:
        names = [f"--{flag}"] + ([f"-{short}"] if short else [])
        parser.add_argument(*names, dest=flag, default=None, metavar="VALUE", help=help_)
    for flag, short, _field, _env in BOOL_FLAGS:
        names = [f"--{flag}"] + ([f"-{short}"] if short else [])
        # pflag booleans: `--flag` means true, `--flag=false` is allowed.
        parser.add_argument(
            *names,
            dest=flag,
            nargs="?",
            const="true",
            default=None,
            metavar="BOOL",
            help=argparse.SUPPRESS if flag.startswith("log_") else f"(env {_env or env_name(flag)})",
        )
    return parser


class Options:
    """Resolved flag values: ``strings[flag]`` / ``bools[flag]`` after env fallback."""

    def __init__(self, strings: dict, bools: dict, environ: dict) -> None:
        self.strings, self.bools, self.environ = strings, bools, environ

    def flag(self, name: str) -> bool:
        return self.bools[name]

    def string(self, name: str) -> str:
        return self.strings[name]


def parse_options(argv: list, environ: dict) -> Options:
    """Flags first, then their environment variables, then upstream's defaults."""
    ns = vars(build_parser().parse_args(argv))
    strings: dict = {}
    for flag, _short, _field, _help in STRING_FLAGS:
        value = ns[flag]
        if value is None and flag not in NO_ENV:
            value = environ.get(env_name(flag)) or None
        strings[flag] = value if value is not None else ""
    bools: dict = {}
    for flag, _short, _field, fallback in BOOL_FLAGS:
        value, source = ns[flag], f"--{flag}"
        if value is None:
            # viper ignores empty environment variables; so do we.
            source = env_name(flag)
            value = environ.get(source) or None
            if value is None and fallback:
                source, value = fallback, environ.get(fallback) or None
        bools[flag] = parse_bool(value, source) if value is not None else False
    return Options(strings, bools, environ)


def _proxy_uid_default(environ: dict) -> str:
    import pwd

    try:
        return str(pwd.getpwnam(environ.get("ENVOY_USER", "istio-proxy")).pw_uid)
    except KeyError:
        return DEFAULT_PROXY_UID


def ipv6_enabled(addresses: list, dual_stack: bool) -> bool:
    """Upstream's getLocalIP: ``addresses`` in kernel dump order (all IPv4, then IPv6)."""
    import ipaddress

    found_v4 = False
    for text in addresses:
        ip = ipaddress.ip_address(text)
        mapped = getattr(ip, "ipv4_mapped", None)
        ip = mapped or ip
        if ip.is_loopback or ip.is_link_local:
            continue
        if ip.version == 6:
            return True  # first global address, or (dual stack) any global IPv6 one
        if not dual_stack:
            return False
        found_v4 = True
    if found_v4:
        return False
    raise UsageError("no valid local IP address found (needed to decide on IPv6)")


def local_addresses() -> list:
    """Addresses of the current netns, IPv4 first, as the kernel's RTM_GETADDR dump lists them."""
    import subprocess

    out = []
    for family in ("-4", "-6"):
        res = subprocess.run(
            ["ip", "-o", family, "addr", "show"], capture_output=True, text=True, timeout=10, check=True
        )
        for line in res.stdout.splitlines():
            words = line.split()
            if "inet" in words or "inet6" in words:
                key = "inet" if "inet" in words else "inet6"
                out.append(words[words.index(key) + 1].split("/")[0])
    return out


def resolv_conf_servers(text: str) -> tuple:
    """``nameserver`` entries split into (IPv4, IPv6), in canonical spelling as upstream's
    netip-based split prints them (``::127.0.0.53`` becomes ``::7f00:35``)."""
    import ipaddress

    v4: list[str] = []
    v6: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).append(str(ip))
    return tuple(v4), tuple(v6)


FLAG_OF_FIELD = {f: flag for flag, _s, f, _h in STRING_FLAGS + BOOL_FLAGS if f}


def config_from_options(opts: Options, enable_ipv6: bool, dns_servers: tuple) -> RedirectConfig:
    """The RedirectConfig upstream would build from these flags; bad values -> UsageError."""
    kwargs: dict = {}
    for flag, _short, field, _help in STRING_FLAGS:
        if field and opts.string(flag) != "":
            kwargs[field] = opts.string(flag)
    for flag, _short, field, _env in BOOL_FLAGS:
        if field:
            kwargs[field] = opts.flag(flag)
    for field, (env, default) in ENV_ONLY.items():
        kwargs[field] = opts.environ.get(env, default)
    if "proxy_uids" not in kwargs:
        kwargs["proxy_uids"] = _proxy_uid_default(opts.environ)
    mode = kwargs.get("interception_mode", "")
    if mode not in ("", "REDIRECT", "TPROXY"):
        # Upstream silently redirects for any value but TPROXY; a typo deserves an error.
        raise UsageError(f"--istio-inbound-interception-mode: expected REDIRECT or TPROXY (got {mode!r})")
    kwargs["interception_mode"] = mode or "REDIRECT"
    kwargs["enable_ipv6"] = enable_ipv6
    kwargs["dns_servers_v4"], kwargs["dns_servers_v6"] = dns_servers
    try:
        return RedirectConfig(**kwargs)
    except ConfigError as exc:
        bad_flag = FLAG_OF_FIELD.get(exc.field)
        where = f"--{bad_flag}" if bad_flag else ENV_ONLY.get(exc.field, (exc.field,))[0]
        raise UsageError(f"{where}: {exc.reason} (got {exc.value!r})") from None


def render_dry_run(rs: RuleSet) -> str:
    """What would be committed: the restore payload per family, then policy routing."""
    parts = ["# iptables-restore --noflush\n", rs.restore_text(4)]
    if rs.v6:
        parts += ["# ip6tables-restore --noflush\n", rs.restore_text(6)]
    for route in rs.routes:
        fam = "-6 " if route.family == 6 else ""
        parts.append(f"# ip {fam}rule add fwmark {route.fwmark} lookup {route.table}\n")
        parts.append(f"# ip {fam}route add local default dev lo table {route.table}\n")
    return "".join(parts)


def _netns_path(value: str) -> str:
    if not value:
        return "/proc/self/ns/net"
    return value if "/" in value else f"/run/netns/{value}"


def _preferred_backend(opts: Options) -> str:
    if opts.flag("native-nftables"):
        return "nft"
    forced = opts.string("force-iptables-binary")
    if forced in ("", "auto"):
        return "auto"
    if forced not in ("legacy", "nft"):
        raise UsageError(f"--force-iptables-binary: expected legacy or nft (got {forced!r})")
    # legacy: x_tables through libiptc; nft: upstream means iptables-nft (x_tables rules
    # over nf_tables), which is the restore backend's nft variant, not native nftables.
    return "iptc" if forced == "legacy" else "restore-nft"


def _netfilter() -> ModuleType:
    try:
        from .. import netfilter
    except ImportError as exc:
        raise RuntimeError(f"netfilter backend unavailable: {exc}") from None
    if not hasattr(netfilter, "apply"):
        raise RuntimeError("netfilter backend unavailable: istio_cni.netfilter has no apply()")
    return netfilter


def run(opts: Options, out: TextIO = sys.stdout) -> int:
    from ..log import log
    from ..rules.builder import build

    preferred = _preferred_backend(opts)
    netns = _netns_path(opts.string("network-namespace"))
    probe = _validation_settings(opts) if opts.flag("run-validation") else None
    enable_ipv6 = ipv6_enabled(local_addresses(), opts.flag("dual-stack"))
    dns: tuple = ((), ())
    if opts.flag("redirect-dns") and not opts.flag("capture-all-dns"):
        with open("/etc/resolv.conf", encoding="utf-8") as fh:
            dns = resolv_conf_servers(fh.read())
    cfg = config_from_options(opts, enable_ipv6, dns)
    if cfg.redirect_dns and not cfg.dns_capture_active:
        log.warning("redirect-dns is set but no DNS servers are known and capture-all-dns is off: DNS capture disabled")
    if opts.flag("cleanup-only"):
        # Like upstream, the flags describe what was installed: the rule set tells the
        # backends which jumps in built-in chains and which policy routes are ours.
        if opts.flag("dry-run"):
            out.write("# remove ISTIO_* chains, our jumps and TPROXY routes\n")
        else:
            _netfilter().remove(netns, preferred, rs=build(cfg))
        return 0
    if not opts.flag("skip-rule-apply"):
        rules = build(cfg)
        if opts.flag("dry-run"):
            out.write(rules.nft_text() if preferred == "nft" else render_dry_run(rules))
        else:
            backend = _netfilter().apply(netns, rules, preferred)
            log.info("rules committed", backend=backend, netns=netns)
    if probe is None:
        return 0
    from . import iptables_validation as validation

    port, timeout = probe
    if validation.validate(cfg.proxy_port, cfg.inbound_capture_port, port, enable_ipv6, timeout):
        log.info("validation passed", probe_port=port)
        return 0
    sys.stderr.write(validation.FAILURE_MESSAGE)
    return validation.VALIDATION_ERROR_CODE


def _validation_settings(opts: Options) -> tuple:
    """(probe port, timeout seconds) from --iptables-probe-port / --probe-timeout."""
    from .iptables_validation import parse_duration

    port_text = opts.string("iptables-probe-port") or "15002"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--iptables-probe-port: expected a port number (got {port_text!r})")
    try:
        timeout = parse_duration(opts.string("probe-timeout") or "5s")
    except ValueError as exc:
        raise UsageError(f"--probe-timeout: {exc}") from None
    return int(port_text), timeout


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(parse_options(argv, dict(os.environ)))
    except UsageError as exc:
        print(f"istio-iptables: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"istio-iptables: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
