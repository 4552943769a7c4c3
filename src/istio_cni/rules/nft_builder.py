"""Native nftables rules (upstream ``istio-nftables`` parity): ``build_nft(cfg)``.

One ``inet`` table per concern, so IPv4 and IPv6 share every chain and a rule that matches
on ``ip``/``ip6`` only applies to its own family:

* ``istio-proxy-nat``    outbound/inbound REDIRECT, DNS redirect to the agent (:15053);
* ``istio-proxy-mangle`` TPROXY marking and the drop-invalid chain;
* ``istio-proxy-raw``    conntrack zones that keep DNS proxy flows apart.

Each table renders as ``add table`` + ``flush table`` + chains + rules, so one ``nft -f``
transaction replaces whatever a previous ADD left: atomic and idempotent without any diffing.

The rule order is upstream's, step by step, because the goldens compare the transaction
text. Upstream builds rules in one pass with ``-I``-style inserts (positions counted the
iptables way, from the head) and turns an insert into an append when the chain does not yet
hold more rules than the index (nft refuses ``insert ... index N`` past the end); that
conversion is reproduced in ``_Collector.tables``.
"""

from __future__ import annotations

from .model import NftChain, NftTable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from .config import RedirectConfig

NAT = "istio-proxy-nat"
MANGLE = "istio-proxy-mangle"
RAW = "istio-proxy-raw"

PREROUTING, OUTPUT = "prerouting", "output"
INBOUND, OUTPUT_CHAIN = "istio-inbound", "istio-output"
REDIRECT, IN_REDIRECT = "istio-redirect", "istio-in-redirect"
OUTPUT_DNS, DIVERT, TPROXY, DROP = "istio-output-dns", "istio-divert", "istio-tproxy", "istio-drop"

OUTBOUND_MARK = "1338"  # proxy -> app over lo in TPROXY mode (upstream constants.OutboundMark)
DNS_AGENT_PORT = "15053"  # istio-agent's DNS proxy
PASSTHROUGH_V4, PASSTHROUGH_V6 = "127.0.0.6/32", "::6/128"  # inbound passthrough source
LOOPBACK_V6 = "::1/128"

# Every chain a table may hold, in upstream's declaration order; only chains that end up
# with rules are created. Base chains: (type, hook, priority). nat hooks at dstnat (-100),
# mangle at -150 (its output chain is type route so a mark change re-routes the packet),
# raw at -300 so conntrack zones are set before conntrack sees the packet.
_CHAINS = {
    NAT: (
        NftChain(PREROUTING, "nat", "prerouting", -100),
        NftChain(OUTPUT, "nat", "output", -100),
        NftChain(INBOUND),
        NftChain(REDIRECT),
        NftChain(IN_REDIRECT),
        NftChain(OUTPUT_CHAIN),
        NftChain(OUTPUT_DNS),
    ),
    MANGLE: (
        NftChain(PREROUTING, "filter", "prerouting", -150),
        NftChain(OUTPUT, "route", "output", -150),
        NftChain(DIVERT),
        NftChain(TPROXY),
        NftChain(INBOUND),
        NftChain(DROP),
    ),
    RAW: (
        NftChain(PREROUTING, "filter", "prerouting", -300),
        NftChain(OUTPUT, "filter", "output", -300),
        NftChain(INBOUND),
        NftChain(OUTPUT_DNS),
    ),
}


class _Collector:
    """Rules in the order upstream issues them, per table; renders the tables at the end."""

    __slots__ = ("ipv6", "rules")

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: dict[str, list] = {NAT: [], MANGLE: [], RAW: []}

    def add(self, table: str, chain: str, match: str, action: str, index: int | None = None) -> None:
        """One rule: ``match`` (may be empty), then ``counter``, then ``action``; upstream puts
        the counter right before the statement that acts on the packet."""
        body = f"{match} counter {action}" if match else f"counter {action}"
        self.rules[table].append((chain, body, index))

    def add6(self, table: str, chain: str, match: str, action: str, index: int | None = None) -> None:
        """An IPv6-only rule: dropped when IPv6 is off, like upstream's ``...V6RuleIfSupported``."""
        if self.ipv6:
            self.add(table, chain, match, action, index)

    def tables(self) -> tuple:
        out = []
        for name in (NAT, MANGLE, RAW):
            rules = self.rules[name]
            if not rules:
                continue
            used = {chain for chain, _, _ in rules}
            counts: dict[str, int] = {}
            statements = []
            for chain, body, index in rules:
                held = counts.get(chain, 0)
                if index is None or index >= held:
                    statements.append(f"add rule inet {name} {chain} {body}")
                else:
                    statements.append(f"insert rule inet {name} {chain} index {index} {body}")
                counts[chain] = held + 1
            chains = tuple(c for c in _CHAINS[name] if c.name in used)
            out.append(NftTable(name, chains, tuple(statements)))
        return tuple(out)


def _split_families(cidrs: tuple) -> tuple:
    """(v4, v6) CIDR lists; the config has already validated and normalised them."""
    return tuple(c for c in cidrs if ":" not in c), tuple(c for c in cidrs if ":" in c)


def _has_loopback(cidrs: tuple) -> bool:
    """Upstream drops the "app to itself over lo" RETURNs when an included range starts at a
    loopback address (the user asked to capture loopback traffic explicitly). The config
    has normalised the CIDRs (IPv6 compressed), so the address text is enough."""
    return any(c.startswith("127.") or c.partition("/")[0] == "::1" for c in cidrs)


def build_nft(cfg: RedirectConfig) -> tuple:
    """The ``inet`` tables for ``cfg`` (a ``RedirectConfig``), in upstream's order."""
    r = _Collector(cfg.enable_ipv6)
    include_all = cfg.outbound_ip_ranges_include == ("*",)
    include_v4, include_v6 = ((), ()) if include_all else _split_families(cfg.outbound_ip_ranges_include)
    exclude_v4, exclude_v6 = _split_families(cfg.outbound_ip_ranges_exclude)
    dns = cfg.dns_capture_active
    keep_lo_returns = not (_has_loopback(include_v4) or _has_loopback(include_v6))

    _skip_interfaces(r, cfg)
    if cfg.drop_invalid:
        r.add(MANGLE, PREROUTING, "meta l4proto tcp ct state invalid", f"jump {DROP}")
        r.add(MANGLE, DROP, "", "drop")
    r.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {cfg.inbound_tunnel_port}", "return")
    r.add(NAT, REDIRECT, "meta l4proto tcp", f"redirect to :{cfg.proxy_port}")
    r.add(NAT, IN_REDIRECT, "meta l4proto tcp", f"redirect to :{cfg.inbound_capture_port}")
    _inbound(r, cfg)
    r.add(NAT, OUTPUT, "", f"jump {OUTPUT_CHAIN}")
    for port in cfg.outbound_ports_exclude:
        r.add(NAT, OUTPUT_CHAIN, f"tcp dport {port}", "return")
        r.add(NAT, OUTPUT_CHAIN, f"udp dport {port}", "return")
    r.add(NAT, OUTPUT_CHAIN, f"oifname lo ip saddr {PASSTHROUGH_V4}", "return")
    r.add6(NAT, OUTPUT_CHAIN, f"oifname lo ip6 saddr {PASSTHROUGH_V6}", "return")
    for uid in cfg.proxy_uids:
        _proxy_owner(r, cfg, f"skuid {uid}", f"skuid != {uid}", dns, dns, keep_lo_returns)
    for gid in cfg.proxy_gids:
        # Upstream keeps port 53 out of the hairpin match for uids only.
        _proxy_owner(r, cfg, f"skgid {gid}", f"skgid != {gid}", False, dns, keep_lo_returns)
    _owner_groups(r, cfg)
    if dns:
        _dns(r, cfg)
    r.add(NAT, OUTPUT_CHAIN, f"ip daddr {cfg.host_ipv4_loopback_cidr}", "return")
    r.add6(NAT, OUTPUT_CHAIN, f"ip6 daddr {LOOPBACK_V6}", "return")
    for cidr in exclude_v4:
        r.add(NAT, OUTPUT_CHAIN, f"ip daddr {cidr}", "return")
    for cidr in exclude_v6:
        r.add6(NAT, OUTPUT_CHAIN, f"ip6 daddr {cidr}", "return")
    for port in cfg.outbound_ports_include:
        r.add(NAT, OUTPUT_CHAIN, f"tcp dport {port}", f"jump {REDIRECT}")
    _outbound_include(r, cfg, include_all, include_v4, include_v6)
    if cfg.tproxy:
        _tproxy_marks(r, cfg)
    return r.tables()


def _skip_interfaces(r: _Collector, cfg: RedirectConfig) -> None:
    for nic in cfg.exclude_interfaces:
        r.add(NAT, PREROUTING, f"iifname {nic}", "return")
        r.add(NAT, OUTPUT, f"oifname {nic}", "return")
    if cfg.tproxy:
        for nic in cfg.exclude_interfaces:
            r.add(MANGLE, PREROUTING, f"iifname {nic}", "return")
            r.add(MANGLE, OUTPUT, f"oifname {nic}", "return")
    for nic in cfg.reroute_virtual_interfaces:
        r.add(NAT, PREROUTING, f"iifname {nic}", "return", index=0)


def _inbound(r: _Collector, cfg: RedirectConfig) -> None:
    ports = cfg.inbound_ports_include
    if not ports:
        return
    wildcard = ports == ("*",)
    if cfg.tproxy:
        mark, capture = cfg.inbound_tproxy_mark, cfg.inbound_capture_port
        r.add(MANGLE, DIVERT, "", f"meta mark set {mark}")
        r.add(MANGLE, DIVERT, "", "accept")
        r.add(
            MANGLE,
            TPROXY,
            f"meta l4proto tcp ip daddr != {cfg.host_ipv4_loopback_cidr} tproxy ip to :{capture} meta mark set {mark}",
            "accept",
        )
        r.add6(
            MANGLE,
            TPROXY,
            f"meta l4proto tcp ip6 daddr != {LOOPBACK_V6} tproxy ip6 to :{capture} meta mark set {mark}",
            "accept",
        )
        table = MANGLE
    else:
        table = NAT
    r.add(table, PREROUTING, "meta l4proto tcp", f"jump {INBOUND}")
    if wildcard:
        for port in cfg.inbound_ports_exclude:
            r.add(table, INBOUND, f"meta l4proto tcp tcp dport {port}", "return")
        if cfg.tproxy:
            r.add(MANGLE, INBOUND, "meta l4proto tcp ct state related,established", f"jump {DIVERT}")
            r.add(MANGLE, INBOUND, "meta l4proto tcp", f"jump {TPROXY}")
        else:
            r.add(NAT, INBOUND, "meta l4proto tcp", f"jump {IN_REDIRECT}")
        return
    for port in ports:
        if cfg.tproxy:
            r.add(MANGLE, INBOUND, f"meta l4proto tcp ct state related,established tcp dport {port}", f"jump {DIVERT}")
            r.add(MANGLE, INBOUND, f"meta l4proto tcp tcp dport {port}", f"jump {TPROXY}")
        else:
            r.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {port}", f"jump {IN_REDIRECT}")


def _proxy_owner(
    r: _Collector,
    cfg: RedirectConfig,
    owner: str,
    not_owner: str,
    skip_dns_hairpin: bool,
    dns: bool,
    keep_lo_returns: bool,
) -> None:
    """The three per-uid (per-gid) rules: hairpin via the service VIP goes to the inbound
    listener, app-to-itself over lo is left alone, everything else the proxy sends RETURNs
    (loop prevention, protocol-agnostic)."""
    tunnel = cfg.inbound_tunnel_port
    ports = f"{{ 53, {tunnel} }}" if skip_dns_hairpin else tunnel
    r.add(
        NAT,
        OUTPUT_CHAIN,
        f"oifname lo meta l4proto tcp ip daddr != {cfg.host_ipv4_loopback_cidr} tcp dport != {ports} {owner}",
        f"jump {IN_REDIRECT}",
    )
    r.add6(
        NAT,
        OUTPUT_CHAIN,
        f"oifname lo meta l4proto tcp ip6 daddr != {LOOPBACK_V6} tcp dport != {ports} {owner}",
        f"jump {IN_REDIRECT}",
    )
    if keep_lo_returns:
        if dns:
            # TCP to a DNS server on localhost must still reach the DNS redirect below.
            r.add(NAT, OUTPUT_CHAIN, f"oifname lo meta l4proto tcp tcp dport != 53 {not_owner}", "return")
        else:
            r.add(NAT, OUTPUT_CHAIN, f"oifname lo {not_owner}", "return")
    r.add(NAT, OUTPUT_CHAIN, owner, "return")


def _owner_groups(r: _Collector, cfg: RedirectConfig) -> None:
    include, exclude = cfg.owner_groups_include, cfg.owner_groups_exclude
    if include == ("*",):
        for group in exclude:
            r.add(NAT, OUTPUT_CHAIN, f"skgid {group}", "return")
        return
    # Capture only the listed groups: everyone else RETURNs. An empty list captures nobody.
    r.add(NAT, OUTPUT_CHAIN, " ".join(f"skgid != {g}" for g in include), "return")


def _dns(r: _Collector, cfg: RedirectConfig) -> None:
    """DNS to the agent (nat) and the conntrack zones that keep its flows apart (raw)."""
    v4, v6, capture_all = cfg.dns_servers_v4, cfg.dns_servers_v6, cfg.capture_all_dns
    to_agent = f"redirect to :{DNS_AGENT_PORT}"
    r.add(RAW, OUTPUT, "", f"jump {OUTPUT_DNS}")
    r.add(NAT, OUTPUT_CHAIN, "", f"jump {OUTPUT_DNS}")
    for proto in ("tcp", "udp"):
        if capture_all:
            match = "meta l4proto tcp tcp dport 53" if proto == "tcp" else "udp dport 53"
            r.add(NAT, OUTPUT_DNS, match, to_agent)
            continue
        for server in v4:
            r.add(NAT, OUTPUT_DNS, f"ip daddr {server}/32 {proto} dport 53", to_agent)
        for server in v6:
            r.add6(NAT, OUTPUT_DNS, f"ip6 daddr {server}/128 {proto} dport 53", to_agent)
    for owner in [f"skuid {u}" for u in cfg.proxy_uids] + [f"skgid {g}" for g in cfg.proxy_gids]:
        # Proxy -> upstream resolver in zone 1, proxy -> app responses in zone 2.
        r.add(RAW, OUTPUT_DNS, f"udp dport 53 meta {owner}", "ct zone set 1")
        r.add(RAW, OUTPUT_DNS, f"udp sport {DNS_AGENT_PORT} meta {owner}", "ct zone set 2")
    r.add(RAW, PREROUTING, "", f"jump {INBOUND}")
    if capture_all:
        r.add(RAW, OUTPUT_DNS, "udp dport 53", "ct zone set 2")
        r.add(RAW, INBOUND, "udp sport 53", "ct zone set 1")
        return
    for server in v4:
        r.add(RAW, OUTPUT_DNS, f"udp dport 53 ip daddr {server}/32", "ct zone set 2")
        r.add(RAW, INBOUND, f"udp sport 53 ip saddr {server}/32", "ct zone set 1")
    for server in v6:
        r.add6(RAW, OUTPUT_DNS, f"udp dport 53 ip6 daddr {server}/128", "ct zone set 2")
        r.add6(RAW, INBOUND, f"udp sport 53 ip6 saddr {server}/128", "ct zone set 1")


def _outbound_include(r: _Collector, cfg: RedirectConfig, include_all: bool, v4: tuple, v6: tuple) -> None:
    nics = cfg.reroute_virtual_interfaces
    if include_all:
        r.add(NAT, OUTPUT_CHAIN, "", f"jump {REDIRECT}")
        for nic in nics:
            r.add(NAT, PREROUTING, f"iifname {nic}", f"jump {REDIRECT}", index=0)
        return
    for cidr in v4:
        for nic in nics:
            r.add(NAT, PREROUTING, f"iifname {nic} ip daddr {cidr}", f"jump {REDIRECT}", index=0)
        r.add(NAT, OUTPUT_CHAIN, f"ip daddr {cidr}", f"jump {REDIRECT}")
    for cidr in v6:
        for nic in nics:
            r.add6(NAT, PREROUTING, f"iifname {nic} ip6 daddr {cidr}", f"jump {REDIRECT}", index=0)
        r.add6(NAT, OUTPUT_CHAIN, f"ip6 daddr {cidr}", f"jump {REDIRECT}")


def _tproxy_marks(r: _Collector, cfg: RedirectConfig) -> None:
    """TPROXY bookkeeping: keep the original-src mark on the connection, mark proxy -> app
    traffic over lo (1338) so the inbound chain lets it through, and never re-capture."""
    mark, loopback = cfg.inbound_tproxy_mark, cfg.host_ipv4_loopback_cidr
    r.add(MANGLE, PREROUTING, f"meta l4proto tcp mark {mark}", "ct mark set mark")
    r.add(MANGLE, OUTPUT, f"oifname lo meta l4proto tcp mark {mark}", "return")
    for owner in [f"skuid {u}" for u in cfg.proxy_uids] + [f"skgid {g}" for g in cfg.proxy_gids]:
        r.add(
            MANGLE,
            OUTPUT,
            f"oifname lo meta l4proto tcp ip daddr != {loopback} {owner}",
            f"meta mark set {OUTBOUND_MARK}",
        )
        r.add6(
            MANGLE,
            OUTPUT,
            f"oifname lo meta l4proto tcp ip6 daddr != {LOOPBACK_V6} {owner}",
            f"meta mark set {OUTBOUND_MARK}",
        )
    r.add(MANGLE, OUTPUT, f"meta l4proto tcp ct mark {mark}", "meta mark set ct mark")
    r.add(MANGLE, INBOUND, f"meta l4proto tcp mark {mark}", "return", index=0)
    r.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip saddr {PASSTHROUGH_V4}", "return", index=1)
    r.add6(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip6 saddr {PASSTHROUGH_V6}", "return", index=1)
    r.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp mark != {OUTBOUND_MARK}", "return", index=2)
