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

WILDCARD = ("*",)
MAX_OWNER_GROUPS_INCLUDE = 64  # upstream's limit: one rule carries one match per group


class ConfigError(ValueError):
    """A redirect setting is invalid; ``field`` and ``value`` name the culprit."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}={value!r}: {reason}")


def split_list(value: object, field: str) -> tuple:
    """Upstream's ``config.Split``: comma list, empty items dropped; tuples pass through."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, (tuple, list)):
        out = []
        for item in value:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise ConfigError(field, value, f"item {item!r} is not a string")
            text = str(item).strip()
            if text:
                out.append(text)
        return tuple(out)
    raise ConfigError(field, value, "expected a comma-separated string or a list of strings")


def _number(field: str, text: object, low: int, high: int, what: str) -> str:
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip().isdigit() or not text.strip().isascii():
        raise ConfigError(field, text, f"expected a {what} ({low}-{high})")
    number = int(text)
    if not low <= number <= high:
        raise ConfigError(field, text, f"{what} out of range {low}-{high}")
    return str(number)


def _port(field: str, text: object) -> str:
    return _number(field, text, 0, 65535, "port number")


def _each(field: str, value: object, items: tuple, check) -> tuple:
    """Apply ``check`` to every list item; an error names the whole value and the item."""
    out = []
    for item in items:
        try:
            out.append(check(field, item))
        except ConfigError as exc:
            if item == value:
                raise
            raise ConfigError(field, value, f"item {item!r}: {exc.reason}") from None
    return tuple(out)


def _ports(field: str, value: object, wildcard: bool = False) -> tuple:
    items = split_list(value, field)
    if wildcard and "*" in items:
        if items != WILDCARD:
            raise ConfigError(field, value, "'*' cannot be combined with other ports")
        return WILDCARD
    return _each(field, value, items, _port)


def _id(field: str, text: object) -> str:
    return _number(field, text, 0, 4294967294, "numeric id")


def _ids(field: str, value: object) -> tuple:
    items = split_list(value, field)
    if not items:
        raise ConfigError(field, value, "at least one numeric id is required")
    return _each(field, value, items, _id)


def _owner_groups(field: str, value: object, wildcard: bool) -> tuple:
    items = split_list(value, field)
    if wildcard and "*" in items:
        if items != WILDCARD:
            raise ConfigError(field, value, "'*' cannot be combined with other groups")
        return WILDCARD
    for group in items:
        # A gid or a group name; names go to `-m owner --gid-owner` and must not carry
        # characters that would split or quote the iptables token.
        if not all(c.isalnum() or c in "._-" for c in group) or not group.isascii():
            raise ConfigError(field, value, f"{group!r} is not a group name or gid")
    return items


def _interfaces(field: str, value: object) -> tuple:
    items = split_list(value, field)
    for name in items:
        # Kernel rules (dev_valid_name): at most 15 bytes, no '/', ':' or whitespace.
        # iptables adds the trailing '+' wildcard, which is allowed here.
        bad = len(name.encode()) > 15 or name in (".", "..") or any(
            c in "/:" or c.isspace() for c in name
        )
        if bad:
            raise ConfigError(field, value, f"{name!r} is not a valid interface name")
    return items


def _cidrs(field: str, value: object, wildcard: bool) -> tuple:
    items = split_list(value, field)
    if "*" in items:
        if not wildcard:
            raise ConfigError(field, value, "'*' is not allowed here")
        if items != WILDCARD:
            raise ConfigError(field, value, "'*' cannot be combined with CIDRs")
        return WILDCARD
    if not items:
        return ()
    import ipaddress  # lazily: most pods carry no CIDR lists

    out = []
    for cidr in items:
        if "/" not in cidr:
            raise ConfigError(field, value, f"{cidr!r} is not a CIDR (missing /prefix)")
        try:
            net = ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise ConfigError(field, value, f"{cidr!r} is not a CIDR: {exc}") from None
        # Upstream renders netip.Prefix.String(): address bits kept, IPv6 compressed.
        out.append(net.with_prefixlen)
    return tuple(out)


def _addresses(field: str, value: object, version: int) -> tuple:
    items = split_list(value, field)
    if not items:
        return ()
    import ipaddress

    out = []
    for addr in items:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(field, value, f"{addr!r} is not an IP address") from None
        if ip.version != version:
            raise ConfigError(field, value, f"{addr!r} is not an IPv{version} address")
        out.append(addr)  # verbatim: upstream writes resolv.conf's spelling into the rule
    return tuple(out)


def _loopback_cidr(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, value, "expected an IPv4 CIDR inside 127.0.0.0/8")
    import ipaddress

    try:
        net = ipaddress.IPv4Network(value.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(field, value, f"not an IPv4 CIDR: {exc}") from None
    if not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise ConfigError(field, value, "must lie inside 127.0.0.0/8")
    return value.strip()


def _flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "expected true or false")
    return value


def _mode(field: str, value: object) -> str:
    mode = value.upper() if isinstance(value, str) else value
    if mode not in ("REDIRECT", "TPROXY"):
        raise ConfigError(field, value, "expected REDIRECT or TPROXY")
    return mode


def _normalise(cfg: "RedirectConfig") -> dict:
    get = cfg.__getattribute__
    out = {
        "proxy_port": _port("proxy_port", get("proxy_port")),
        "inbound_capture_port": _port("inbound_capture_port", get("inbound_capture_port")),
        "inbound_tunnel_port": _port("inbound_tunnel_port", get("inbound_tunnel_port")),
        "proxy_uids": _ids("proxy_uids", get("proxy_uids")),
        "interception_mode": _mode("interception_mode", get("interception_mode")),
        "inbound_tproxy_mark": _number(
            "inbound_tproxy_mark", get("inbound_tproxy_mark"), 0, 4294967295, "mark"
        ),
        "inbound_tproxy_route_table": _number(
            "inbound_tproxy_route_table", get("inbound_tproxy_route_table"),
            1, 4294967295, "route table id",
        ),
        "inbound_ports_include": _ports(
            "inbound_ports_include", get("inbound_ports_include"), wildcard=True
        ),
        "inbound_ports_exclude": _ports("inbound_ports_exclude", get("inbound_ports_exclude")),
        "outbound_ip_ranges_include": _cidrs(
            "outbound_ip_ranges_include", get("outbound_ip_ranges_include"), wildcard=True
        ),
        "outbound_ip_ranges_exclude": _cidrs(
            "outbound_ip_ranges_exclude", get("outbound_ip_ranges_exclude"), wildcard=False
        ),
        "outbound_ports_include": _ports("outbound_ports_include", get("outbound_ports_include")),
        "outbound_ports_exclude": _ports("outbound_ports_exclude", get("outbound_ports_exclude")),
        "exclude_interfaces": _interfaces("exclude_interfaces", get("exclude_interfaces")),
        "reroute_virtual_interfaces": _interfaces(
            "reroute_virtual_interfaces", get("reroute_virtual_interfaces")
        ),
        "dns_servers_v4": _addresses("dns_servers_v4", get("dns_servers_v4"), 4),
        "dns_servers_v6": _addresses("dns_servers_v6", get("dns_servers_v6"), 6),
        "owner_groups_include": _owner_groups(
            "owner_groups_include", get("owner_groups_include"), wildcard=True
        ),
        "owner_groups_exclude": _owner_groups(
            "owner_groups_exclude", get("owner_groups_exclude"), wildcard=False
        ),
        "host_ipv4_loopback_cidr": _loopback_cidr(
            "host_ipv4_loopback_cidr", get("host_ipv4_loopback_cidr")
        ),
    }
    gids = get("proxy_gids")
    out["proxy_gids"] = out["proxy_uids"] if gids is None else _ids("proxy_gids", gids)
    for name in ("redirect_dns", "capture_all_dns", "drop_invalid", "enable_ipv6", "dual_stack"):
        out[name] = _flag(name, get(name))

    include, exclude = out["owner_groups_include"], out["owner_groups_exclude"]
    if exclude and include != WILDCARD:
        # Upstream silently ignores the exclude list unless include is '*'; a config that
        # asks for both is a mistake worth naming.
        raise ConfigError(
            "owner_groups_exclude", exclude, "only allowed when owner_groups_include is '*'"
        )
    if include != WILDCARD and len(include) > MAX_OWNER_GROUPS_INCLUDE:
        raise ConfigError(
            "owner_groups_include", include,
            f"at most {MAX_OWNER_GROUPS_INCLUDE} groups (one iptables match each)",
        )
    return out


class RedirectConfig(Value):
    """The redirect for one pod. Defaults are upstream ``istio-iptables``' defaults."""

    __slots__ = (
        "proxy_port",                  # str, outbound capture target (-p)
        "inbound_capture_port",        # str, inbound capture target (-z)
        "inbound_tunnel_port",         # str, HBONE port, never captured (-e)
        "proxy_uids",                  # tuple[str, ...] (-u)
        "proxy_gids",                  # tuple[str, ...] | None = same as uids (-g)
        "interception_mode",           # "REDIRECT" | "TPROXY" (-m)
        "inbound_tproxy_mark",         # str (-t)
        "inbound_tproxy_route_table",  # str (-r)
        "inbound_ports_include",       # tuple[str, ...]; ("*",) = all (-b)
        "inbound_ports_exclude",       # tuple[str, ...]; used with ("*",) (-d)
        "outbound_ip_ranges_include",  # tuple[str, ...]; ("*",) = all (-i)
        "outbound_ip_ranges_exclude",  # tuple[str, ...] (-x)
        "outbound_ports_include",      # tuple[str, ...] (-q)
        "outbound_ports_exclude",      # tuple[str, ...] (-o)
        "exclude_interfaces",          # tuple[str, ...] (-c)
        "reroute_virtual_interfaces",  # tuple[str, ...]; KubeVirt (-k)
        "redirect_dns",                # bool (--redirect-dns)
        "capture_all_dns",             # bool (--capture-all-dns)
        "dns_servers_v4",              # tuple[str, ...]; from resolv.conf upstream
        "dns_servers_v6",              # tuple[str, ...]
        "drop_invalid",                # bool (--drop-invalid)
        "owner_groups_include",        # tuple[str, ...]; ("*",) = all
        "owner_groups_exclude",        # tuple[str, ...]; only with include ("*",)
        "host_ipv4_loopback_cidr",     # str
        "enable_ipv6",                 # bool: also program ip6tables
        "dual_stack",                  # bool (--dual-stack)
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

    def __init__(self, *args, **kwargs):
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
        return self.redirect_dns and (
            self.capture_all_dns or bool(self.dns_servers_v4 or self.dns_servers_v6)
        )
