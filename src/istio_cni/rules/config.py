"""``RedirectConfig``: every setting upstream ``istio-iptables`` takes, typed and validated.

One value describes the redirect for one pod; ``rules.builder.build`` (x_tables) and
``rules.nft_builder.build_nft`` (native nftables) turn it into rules, ``redirect`` fills it
from pod annotations, the ``istio-iptables`` CLI from flags and environment variables.

Field conventions (kept stable; other modules construct this by keyword):

* Ports, marks and route tables are decimal strings (``"15001"``), because they end up as
  iptables tokens and upstream passes them through verbatim.
* Lists are tuples of strings. A comma-separated string is accepted too and split the way
  upstream's ``config.Split`` does (empty items dropped, so ``"6000,7000,"`` is two ports).
* ``("*",)`` is the wildcard for ``inbound_ports_include``, ``outbound_ip_ranges_include``
  and ``owner_groups_include``; an empty tuple means "capture none".
* ``proxy_gids`` left as ``None`` means "the same as ``proxy_uids``" (upstream's default).

Every bad value raises ``ConfigError`` naming the field, the value and what is wrong, at
construction time, so nothing half-valid ever reaches the builder.
"""

from __future__ import annotations

from ..value import Value
from .checks import (  # noqa: F401  (ConfigError, WILDCARD, split_list are part of this API)
    MAX_OWNER_GROUPS_INCLUDE,
    WILDCARD,
    ConfigError,
    parse_addresses,
    parse_cidrs,
    parse_flag,
    parse_ids,
    parse_interfaces,
    parse_loopback_cidr,
    parse_mode,
    parse_number,
    parse_owner_groups,
    parse_port,
    parse_ports,
    split_list,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import Any


def _normalise(cfg: RedirectConfig) -> dict[str, Any]:
    get = cfg.__getattribute__
    out: dict[str, Any] = {
        "proxy_port": parse_port("proxy_port", get("proxy_port")),
        "inbound_capture_port": parse_port("inbound_capture_port", get("inbound_capture_port")),
        "inbound_tunnel_port": parse_port("inbound_tunnel_port", get("inbound_tunnel_port")),
        "proxy_uids": parse_ids("proxy_uids", get("proxy_uids")),
        "interception_mode": parse_mode("interception_mode", get("interception_mode")),
        "inbound_tproxy_mark": parse_number("inbound_tproxy_mark", get("inbound_tproxy_mark"), 0, 4294967295, "mark"),
        "inbound_tproxy_route_table": parse_number(
            "inbound_tproxy_route_table",
            get("inbound_tproxy_route_table"),
            1,
            4294967295,
            "route table id",
        ),
        "inbound_ports_include": parse_ports("inbound_ports_include", get("inbound_ports_include"), wildcard=True),
        "inbound_ports_exclude": parse_ports("inbound_ports_exclude", get("inbound_ports_exclude")),
        "outbound_ip_ranges_include": parse_cidrs(
            "outbound_ip_ranges_include", get("outbound_ip_ranges_include"), wildcard=True
        ),
        "outbound_ip_ranges_exclude": parse_cidrs(
            "outbound_ip_ranges_exclude", get("outbound_ip_ranges_exclude"), wildcard=False
        ),
        "outbound_ports_include": parse_ports("outbound_ports_include", get("outbound_ports_include")),
        "outbound_ports_exclude": parse_ports("outbound_ports_exclude", get("outbound_ports_exclude")),
        "exclude_interfaces": parse_interfaces("exclude_interfaces", get("exclude_interfaces")),
        "reroute_virtual_interfaces": parse_interfaces("reroute_virtual_interfaces", get("reroute_virtual_interfaces")),
        "dns_servers_v4": parse_addresses("dns_servers_v4", get("dns_servers_v4"), 4),
        "dns_servers_v6": parse_addresses("dns_servers_v6", get("dns_servers_v6"), 6),
        "owner_groups_include": parse_owner_groups("owner_groups_include", get("owner_groups_include"), wildcard=True),
        "owner_groups_exclude": parse_owner_groups("owner_groups_exclude", get("owner_groups_exclude"), wildcard=False),
        "host_ipv4_loopback_cidr": parse_loopback_cidr("host_ipv4_loopback_cidr", get("host_ipv4_loopback_cidr")),
    }
    gids = get("proxy_gids")
    out["proxy_gids"] = out["proxy_uids"] if gids is None else parse_ids("proxy_gids", gids)
    for name in ("redirect_dns", "capture_all_dns", "drop_invalid", "enable_ipv6", "dual_stack"):
        out[name] = parse_flag(name, get(name))

    include, exclude = out["owner_groups_include"], out["owner_groups_exclude"]
    if exclude and include != WILDCARD:
        # Upstream silently ignores the exclude list unless include is '*'; a config that
        # asks for both is a mistake worth naming.
        raise ConfigError("owner_groups_exclude", exclude, "only allowed when owner_groups_include is '*'")
    if include != WILDCARD and len(include) > MAX_OWNER_GROUPS_INCLUDE:
        raise ConfigError(
            "owner_groups_include",
            include,
            f"at most {MAX_OWNER_GROUPS_INCLUDE} groups (one iptables match each)",
        )
    return out


class RedirectConfig(Value):
    """The redirect for one pod. Defaults are upstream ``istio-iptables``' defaults."""

    __slots__ = (
        "proxy_port",  # str, outbound capture target (-p)
        "inbound_capture_port",  # str, inbound capture target (-z)
        "inbound_tunnel_port",  # str, HBONE port, never captured (-e)
        "proxy_uids",  # tuple[str, ...] (-u)
        "proxy_gids",  # tuple[str, ...] | None = same as uids (-g)
        "interception_mode",  # "REDIRECT" | "TPROXY" (-m)
        "inbound_tproxy_mark",  # str (-t)
        "inbound_tproxy_route_table",  # str (-r)
        "inbound_ports_include",  # tuple[str, ...]; ("*",) = all (-b)
        "inbound_ports_exclude",  # tuple[str, ...]; used with ("*",) (-d)
        "outbound_ip_ranges_include",  # tuple[str, ...]; ("*",) = all (-i)
        "outbound_ip_ranges_exclude",  # tuple[str, ...] (-x)
        "outbound_ports_include",  # tuple[str, ...] (-q)
        "outbound_ports_exclude",  # tuple[str, ...] (-o)
        "exclude_interfaces",  # tuple[str, ...] (-c)
        "reroute_virtual_interfaces",  # tuple[str, ...]; KubeVirt (-k)
        "redirect_dns",  # bool (--redirect-dns)
        "capture_all_dns",  # bool (--capture-all-dns)
        "dns_servers_v4",  # tuple[str, ...]; from resolv.conf upstream
        "dns_servers_v6",  # tuple[str, ...]
        "drop_invalid",  # bool (--drop-invalid)
        "owner_groups_include",  # tuple[str, ...]; ("*",) = all
        "owner_groups_exclude",  # tuple[str, ...]; only with include ("*",)
        "host_ipv4_loopback_cidr",  # str
        "enable_ipv6",  # bool: also program ip6tables
        "dual_stack",  # bool (--dual-stack)
    )
    _defaults = {
        "proxy_port": "15001",
        "inbound_capture_port": "15006",
        "inbound_tunnel_port": "15008",
        "proxy_uids": ("1337",),
        "proxy_gids": None,
        "interception_mode": "REDIRECT",
        "inbound_tproxy_mark": "1337",
        "inbound_tproxy_route_table": "133",
        "inbound_ports_include": (),
        "inbound_ports_exclude": (),
        "outbound_ip_ranges_include": (),
        "outbound_ip_ranges_exclude": (),
        "outbound_ports_include": (),
        "outbound_ports_exclude": (),
        "exclude_interfaces": (),
        "reroute_virtual_interfaces": (),
        "redirect_dns": False,
        "capture_all_dns": False,
        "dns_servers_v4": (),
        "dns_servers_v6": (),
        "drop_invalid": False,
        "owner_groups_include": WILDCARD,
        "owner_groups_exclude": (),
        "host_ipv4_loopback_cidr": "127.0.0.1/32",
        "enable_ipv6": False,
        "dual_stack": False,
    }
    # The fields as ``__init__`` leaves them (normalised by ``_normalise``).
    proxy_port: str
    inbound_capture_port: str
    inbound_tunnel_port: str
    proxy_uids: tuple[str, ...]
    proxy_gids: tuple[str, ...]
    interception_mode: str
    inbound_tproxy_mark: str
    inbound_tproxy_route_table: str
    inbound_ports_include: tuple[str, ...]
    inbound_ports_exclude: tuple[str, ...]
    outbound_ip_ranges_include: tuple[str, ...]
    outbound_ip_ranges_exclude: tuple[str, ...]
    outbound_ports_include: tuple[str, ...]
    outbound_ports_exclude: tuple[str, ...]
    exclude_interfaces: tuple[str, ...]
    reroute_virtual_interfaces: tuple[str, ...]
    redirect_dns: bool
    capture_all_dns: bool
    dns_servers_v4: tuple[str, ...]
    dns_servers_v6: tuple[str, ...]
    drop_invalid: bool
    owner_groups_include: tuple[str, ...]
    owner_groups_exclude: tuple[str, ...]
    host_ipv4_loopback_cidr: str
    enable_ipv6: bool
    dual_stack: bool

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        set_ = object.__setattr__
        for name, value in _normalise(self).items():
            set_(self, name, value)

    @property
    def tproxy(self) -> bool:
        return self.interception_mode == "TPROXY"

    @property
    def dns_capture_active(self) -> bool:
        """Upstream turns DNS capture off (with a warning) when it knows no DNS server and
        is not told to capture all port-53 traffic."""
        return self.redirect_dns and (self.capture_all_dns or bool(self.dns_servers_v4 or self.dns_servers_v6))
