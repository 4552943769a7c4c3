"""``build(cfg) -> RuleSet``: upstream ``istio-iptables``' redirect rules as a pure function.

The rule order, chain creation order and token spelling follow upstream's capture
configurator exactly, because parity is tested byte for byte against its goldens and its
``--dry-run`` output: rules are collected per family in the order upstream adds them, and
rendered per table in alphabetical order, each table creating its chains (``-N``) in order
of first use, then chains that are only jumped to.

This module is on the plugin's ADD path: it imports nothing beyond the rule model.
"""

from __future__ import annotations

from .model import PolicyRoute, Rule, RuleSet, Table

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from .config import RedirectConfig

# Upstream constants (tools/istio-iptables/pkg/constants).
INBOUND = "ISTIO_INBOUND"
OUTPUT = "ISTIO_OUTPUT"
OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
REDIRECT = "ISTIO_REDIRECT"
IN_REDIRECT = "ISTIO_IN_REDIRECT"
DIVERT = "ISTIO_DIVERT"
TPROXY = "ISTIO_TPROXY"
DROP = "ISTIO_DROP"
OUTBOUND_MARK = "1338"  # TPROXY: proxy -> app over lo, so inbound capture skips it
DNS_AGENT_PORT = "15053"
PASSTHROUGH_V4, PASSTHROUGH_V6 = "127.0.0.6/32", "::6/128"
LOOPBACK_V6 = "::1/128"

# Never created with -N: built-in chains and the standard verdicts.
_BUILTIN = frozenset(("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"))


class _Family:
    """Marks the token that differs per family (upstream's PLACEHOLDER_IP_VERSION_SPECIFIC)."""

    __slots__ = ("v4", "v6")

    def __init__(self, v4: str, v6: str) -> None:
        self.v4, self.v6 = v4, v6


class _Collector:
    """Upstream's IptablesRuleBuilder: rules per family in the order they are added."""

    __slots__ = ("v4", "v6", "ipv6")

    def __init__(self, ipv6: bool) -> None:
        self.v4: list = []
        self.v6: list = []
        self.ipv6 = ipv6

    def add(self, table: str, chain: str, *spec: str, at: int | None = None, v4: bool = True, v6: bool = True) -> None:
        if v4:
            self.v4.append(_rule(table, chain, spec, at))
        if v6 and self.ipv6:
            self.v6.append(_rule(table, chain, spec, at))

    def add_versioned(self, table: str, chain: str, *spec: str | _Family, at: int | None = None) -> None:
        """``add`` for a spec holding ``_Family`` tokens (upstream's AppendVersionedRule)."""
        self.v4.append(_rule(table, chain, _pick(spec, 4), at))
        if self.ipv6:
            self.v6.append(_rule(table, chain, _pick(spec, 6), at))


def _pick(spec: tuple, family: int) -> tuple:
    return tuple((t.v4 if family == 4 else t.v6) if type(t) is _Family else t for t in spec)


_new = object.__new__
_set = object.__setattr__


def _rule(table: str, chain: str, spec: tuple, at: int | None) -> tuple:
    # A pod's rule set is ~20-140 rules, built on every ADD; Value's generic keyword
    # constructor was the largest cost here, so Rules are filled field by field (the same
    # thing Value.__init__ does, minus argument matching).
    rule = _new(Rule)
    _set(rule, "chain", chain)
    _set(rule, "spec", spec)
    _set(rule, "insert_at", at)
    return table, rule


def _tables(rules: list) -> tuple:
    """Group collected rules into restore tables (upstream's buildRestore)."""
    chains: dict = {}
    by_table: dict = {}
    for table, rule in rules:
        by_table.setdefault(table, []).append(rule)
        known = chains.setdefault(table, {})
        if rule.chain not in _BUILTIN:
            known.setdefault(rule.chain, None)
    for table, rule in rules:
        # Chains we only jump to still need to exist for the restore to load.
        spec = rule.spec
        if len(spec) >= 2 and spec[-2] == "-j" and spec[-1] not in _BUILTIN:
            chains[table].setdefault(spec[-1], None)
    return tuple(Table(name, tuple(chains[name]), tuple(by_table[name])) for name in sorted(by_table))


def _short_circuit_interfaces(r: _Collector, cfg: RedirectConfig) -> None:
    for nic in cfg.exclude_interfaces:
        r.add("nat", "PREROUTING", "-i", nic, "-j", "RETURN")
        r.add("nat", "OUTPUT", "-o", nic, "-j", "RETURN")
    if cfg.tproxy:
        for nic in cfg.exclude_interfaces:
            r.add("mangle", "PREROUTING", "-i", nic, "-j", "RETURN")
            r.add("mangle", "OUTPUT", "-o", nic, "-j", "RETURN")
    # KubeVirt: traffic arriving on these NICs is the VM's outbound, not inbound.
    for nic in cfg.reroute_virtual_interfaces:
        r.add("nat", "PREROUTING", "-i", nic, "-j", "RETURN", at=1)


def _inbound(r: _Collector, cfg: RedirectConfig, loopback: _Family) -> None:
    ports = cfg.inbound_ports_include
    if not ports:
        return
    tproxy = cfg.tproxy
    if tproxy:
        # Marked packets are routed to lo (policy route), where TPROXY hands them to the proxy.
        r.add("mangle", DIVERT, "-j", "MARK", "--set-mark", cfg.inbound_tproxy_mark)
        r.add("mangle", DIVERT, "-j", "ACCEPT")
        r.add_versioned(
            "mangle",
            TPROXY,
            "!",
            "-d",
            loopback,
            "-p",
            "tcp",
            "-j",
            "TPROXY",
            "--tproxy-mark",
            cfg.inbound_tproxy_mark + "/0xffffffff",
            "--on-port",
            cfg.inbound_capture_port,
        )
    table = "mangle" if tproxy else "nat"
    r.add(table, "PREROUTING", "-p", "tcp", "-j", INBOUND)
    if ports == ("*",):
        for port in cfg.inbound_ports_exclude:
            r.add(table, INBOUND, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if tproxy:
            r.add("mangle", INBOUND, "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", DIVERT)
            r.add("mangle", INBOUND, "-p", "tcp", "-j", TPROXY)
        else:
            r.add("nat", INBOUND, "-p", "tcp", "-j", IN_REDIRECT)
        return
    for port in ports:
        if tproxy:
            r.add(
                "mangle",
                INBOUND,
                "-p",
                "tcp",
                "--dport",
                port,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                DIVERT,
            )
            r.add("mangle", INBOUND, "-p", "tcp", "--dport", port, "-j", TPROXY)
        else:
            r.add("nat", INBOUND, "-p", "tcp", "--dport", port, "-j", IN_REDIRECT)


def _proxy_owner(r: _Collector, cfg: RedirectConfig, loopback: _Family, dns: bool, keep_lo: bool) -> None:
    """Per proxy uid and gid: hairpin to the inbound listener, skip app lo, skip the proxy."""
    tunnel = cfg.inbound_tunnel_port
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for ident in ids:
            # app -> service VIP -> proxy (client) -> proxy (server) -> app arrives over lo.
            # With DNS capture, uid rules also leave port 53 to the agent (upstream does this
            # for uids only).
            if dns and kind == "--uid-owner":
                not_to_proxy: tuple[str, ...] = ("-m", "multiport", "!", "--dports", "53," + tunnel)
            else:
                not_to_proxy = ("!", "--dport", tunnel)
            owner = ("-m", "owner", kind, ident)
            r.add_versioned(
                "nat", OUTPUT, "-o", "lo", "!", "-d", loopback, "-p", "tcp", *not_to_proxy, *owner, "-j", IN_REDIRECT
            )
            if keep_lo:
                # app -> itself over lo is not captured, except DNS to a local server.
                not_dns = ("-p", "tcp", "!", "--dport", "53") if dns else ()
                r.add("nat", OUTPUT, "-o", "lo", *not_dns, "-m", "owner", "!", kind, ident, "-j", "RETURN")
            # The proxy's own traffic never loops back into it, whatever the protocol.
            r.add("nat", OUTPUT, "-m", "owner", kind, ident, "-j", "RETURN")


def _owner_groups(r: _Collector, cfg: RedirectConfig) -> None:
    include = cfg.owner_groups_include
    if include == ("*",):
        for group in cfg.owner_groups_exclude:
            r.add("nat", OUTPUT, "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    spec: list = []
    for group in include:
        spec += ("-m", "owner", "!", "--gid-owner", group)
    r.add("nat", OUTPUT, *spec, "-j", "RETURN")


def _dns(r: _Collector, cfg: RedirectConfig) -> None:
    all_dns = cfg.capture_all_dns
    v4s, v6s = cfg.dns_servers_v4, cfg.dns_servers_v6
    r.add("raw", "OUTPUT", "-j", OUTPUT_DNS)
    r.add("nat", OUTPUT, "-j", OUTPUT_DNS, v4=all_dns or bool(v4s), v6=all_dns or bool(v6s))
    for proto, to in (("tcp", "--to-ports"), ("udp", "--to-port")):
        if all_dns:
            r.add("nat", OUTPUT_DNS, "-p", proto, "--dport", "53", "-j", "REDIRECT", to, DNS_AGENT_PORT)
            continue
        # Only the named servers; each rule in its own family's table.
        for server in v4s:
            r.add("nat", OUTPUT_DNS, *_to_dns_agent(proto, server + "/32", to), v6=False)
        for server in v6s:
            r.add("nat", OUTPUT_DNS, *_to_dns_agent(proto, server + "/128", to), v4=False)
    _dns_conntrack_zones(r, cfg)


def _to_dns_agent(proto: str, server: str, to: str) -> tuple[str, ...]:
    return ("-p", proto, "--dport", "53", "-d", server, "-j", "REDIRECT", to, DNS_AGENT_PORT)


def _dns_conntrack_zones(r: _Collector, cfg: RedirectConfig) -> None:
    """Zone 1: proxy <-> upstream resolvers; zone 2: app <-> proxy. Keeps the two UDP
    flows that share a 5-tuple after NAT from racing in one conntrack zone."""
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for ident in ids:
            r.add(
                "raw", OUTPUT_DNS, "-p", "udp", "--dport", "53", "-m", "owner", kind, ident, "-j", "CT", "--zone", "1"
            )
            r.add(
                "raw",
                OUTPUT_DNS,
                "-p",
                "udp",
                "--sport",
                DNS_AGENT_PORT,
                "-m",
                "owner",
                kind,
                ident,
                "-j",
                "CT",
                "--zone",
                "2",
            )
    if cfg.capture_all_dns:
        r.add("raw", "PREROUTING", "-j", INBOUND)
        r.add("raw", OUTPUT_DNS, "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        r.add("raw", INBOUND, "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    for servers, suffix, v4 in ((cfg.dns_servers_v4, "/32", True), (cfg.dns_servers_v6, "/128", False)):
        if servers:
            r.add("raw", "PREROUTING", "-j", INBOUND, v4=v4, v6=not v4)
        for server in servers:
            r.add(
                "raw",
                OUTPUT_DNS,
                "-p",
                "udp",
                "--dport",
                "53",
                "-d",
                server + suffix,
                "-j",
                "CT",
                "--zone",
                "2",
                v4=v4,
                v6=not v4,
            )
            r.add(
                "raw",
                INBOUND,
                "-p",
                "udp",
                "--sport",
                "53",
                "-s",
                server + suffix,
                "-j",
                "CT",
                "--zone",
                "1",
                v4=v4,
                v6=not v4,
            )


def _outbound_include(r: _Collector, cfg: RedirectConfig, cidrs: tuple, v4: bool) -> None:
    if cidrs == ("*",):
        r.add("nat", OUTPUT, "-j", REDIRECT, v4=v4, v6=not v4)
        for nic in cfg.reroute_virtual_interfaces:
            r.add("nat", "PREROUTING", "-i", nic, "-j", REDIRECT, at=1, v4=v4, v6=not v4)
        return
    for cidr in cidrs:
        for nic in cfg.reroute_virtual_interfaces:
            r.add("nat", "PREROUTING", "-i", nic, "-d", cidr, "-j", REDIRECT, at=1, v4=v4, v6=not v4)
        r.add("nat", OUTPUT, "-d", cidr, "-j", REDIRECT, v4=v4, v6=not v4)


def _tproxy_marks(r: _Collector, cfg: RedirectConfig, loopback: _Family) -> None:
    mark = cfg.inbound_tproxy_mark
    # Keep the mark set by Envoy's original_src filter on the connection.
    r.add("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    r.add("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for ident in ids:
            # proxy (outbound) -> app via pod IP over lo: mark so inbound capture skips it.
            r.add_versioned(
                "mangle",
                "OUTPUT",
                "!",
                "-d",
                loopback,
                "-p",
                "tcp",
                "-o",
                "lo",
                "-m",
                "owner",
                kind,
                ident,
                "-j",
                "MARK",
                "--set-mark",
                OUTBOUND_MARK,
            )
    r.add("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    r.add("mangle", INBOUND, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", at=1)
    r.add("mangle", INBOUND, "-p", "tcp", "-s", PASSTHROUGH_V4, "-i", "lo", "-j", "RETURN", at=2, v6=False)
    r.add("mangle", INBOUND, "-p", "tcp", "-s", PASSTHROUGH_V6, "-i", "lo", "-j", "RETURN", at=2, v4=False)
    r.add("mangle", INBOUND, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK, "-j", "RETURN", at=3)


def _split_families(cidrs: tuple) -> tuple:
    if cidrs == ("*",):
        return cidrs, cidrs
    v4 = tuple(c for c in cidrs if ":" not in c)
    v6 = tuple(c for c in cidrs if ":" in c)
    return v4, v6


def _is_loopback(cidr: str) -> bool:
    # Upstream checks the prefix's address: 127.0.0.0/8 or ::1.
    addr = cidr.split("/", 1)[0]
    return addr.startswith("127.") or addr in ("::1", "0:0:0:0:0:0:0:1")


def _collect(cfg: RedirectConfig) -> _Collector:
    """All rules for ``cfg`` in upstream's order, per family."""
    r = _Collector(cfg.enable_ipv6)
    loopback = _Family(cfg.host_ipv4_loopback_cidr, LOOPBACK_V6)
    include_v4, include_v6 = _split_families(cfg.outbound_ip_ranges_include)
    exclude_v4, exclude_v6 = _split_families(cfg.outbound_ip_ranges_exclude)
    dns = cfg.dns_capture_active
    keep_lo = not any(_is_loopback(c) for c in cfg.outbound_ip_ranges_include if c != "*")

    _short_circuit_interfaces(r, cfg)
    if cfg.drop_invalid:
        # Out-of-window packets would otherwise reach the app as RSTs.
        r.add("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", DROP)
        r.add("mangle", DROP, "-j", "DROP")
    r.add("nat", INBOUND, "-p", "tcp", "--dport", cfg.inbound_tunnel_port, "-j", "RETURN")
    r.add("nat", REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port)
    r.add("nat", IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.inbound_capture_port)
    _inbound(r, cfg, loopback)
    r.add("nat", "OUTPUT", "-j", OUTPUT)
    for port in cfg.outbound_ports_exclude:
        r.add("nat", OUTPUT, "-p", "tcp", "--dport", port, "-j", "RETURN")
        r.add("nat", OUTPUT, "-p", "udp", "--dport", port, "-j", "RETURN")
    # Inbound passthrough traffic is sent from 127.0.0.6 (::6) and must not loop.
    r.add_versioned("nat", OUTPUT, "-o", "lo", "-s", _Family(PASSTHROUGH_V4, PASSTHROUGH_V6), "-j", "RETURN")
    _proxy_owner(r, cfg, loopback, dns, keep_lo)
    _owner_groups(r, cfg)
    if dns:
        _dns(r, cfg)
    # Envoy-aware apps and container-to-container traffic use localhost.
    r.add_versioned("nat", OUTPUT, "-d", loopback, "-j", "RETURN")
    for cidr in exclude_v4:
        r.add("nat", OUTPUT, "-d", cidr, "-j", "RETURN", v6=False)
    for cidr in exclude_v6:
        r.add("nat", OUTPUT, "-d", cidr, "-j", "RETURN", v4=False)
    for port in cfg.outbound_ports_include:
        r.add("nat", OUTPUT, "-p", "tcp", "--dport", port, "-j", REDIRECT)
    _outbound_include(r, cfg, include_v4, v4=True)
    _outbound_include(r, cfg, include_v6, v4=False)
    if cfg.tproxy:
        _tproxy_marks(r, cfg, loopback)
    return r


def policy_routes(cfg: RedirectConfig) -> tuple:
    """TPROXY's ``ip rule fwmark M lookup T`` + local default route, when inbound is captured."""
    if not (cfg.tproxy and cfg.inbound_ports_include):
        return ()
    mark, table = int(cfg.inbound_tproxy_mark), int(cfg.inbound_tproxy_route_table)
    routes = [PolicyRoute(4, mark, table)]
    if cfg.enable_ipv6:
        routes.append(PolicyRoute(6, mark, table))
    return tuple(routes)


def lo_addresses(cfg: RedirectConfig) -> tuple:
    """``ip -6 addr add ::6/128 dev lo`` when IPv6 is on (upstream's configureIPv6Addresses):
    Envoy binds ``::6`` as the source of its IPv6 inbound passthrough, which the
    ``-s ::6/128 -o lo -j RETURN`` rule keeps from looping."""
    return (PASSTHROUGH_V6,) if cfg.enable_ipv6 else ()


def _nft_tables(cfg: RedirectConfig) -> tuple:
    try:
        from .nft_builder import build_nft
    except ModuleNotFoundError as exc:
        # Only "the native-nftables builder is not installed" is tolerated; a broken import
        # inside it must surface.
        if exc.name != __package__ + ".nft_builder":
            raise
        return ()
    return tuple(build_nft(cfg))


def build_xtables(cfg: RedirectConfig) -> RuleSet:
    """The x_tables view only (v4, v6, routes), without the native-nftables rendering."""
    r = _collect(cfg)
    return RuleSet(v4=_tables(r.v4), v6=_tables(r.v6), routes=policy_routes(cfg), lo_addresses=lo_addresses(cfg))


def build(cfg: RedirectConfig) -> RuleSet:
    """Everything one pod needs for ``cfg``: x_tables for both families, TPROXY routes,
    and the native-nftables tables when ``rules.nft_builder`` is present."""
    return build_xtables(cfg).replace(nft=_nft_tables(cfg))
