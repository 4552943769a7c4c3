"""Field checks for ``RedirectConfig``: parse, normalise, or raise ``ConfigError``.

Each check takes the field name (for the error) and the raw value, and returns the value in
the form the builder uses. Kept apart from ``config`` so the record stays readable; nothing
here imports more than the standard library, and ``ipaddress`` only when a CIDR or address
list is actually present.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable

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


def parse_number(field: str, text: object, low: int, high: int, what: str) -> str:
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip().isdigit() or not text.strip().isascii():
        raise ConfigError(field, text, f"expected a {what} ({low}-{high})")
    number = int(text)
    if not low <= number <= high:
        raise ConfigError(field, text, f"{what} out of range {low}-{high}")
    return str(number)


def parse_port(field: str, text: object) -> str:
    return parse_number(field, text, 0, 65535, "port number")


def _each(field: str, value: object, items: tuple, check: Callable[[str, str], str]) -> tuple:
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


def parse_ports(field: str, value: object, wildcard: bool = False) -> tuple:
    items = split_list(value, field)
    if wildcard and "*" in items:
        if items != WILDCARD:
            raise ConfigError(field, value, "'*' cannot be combined with other ports")
        return WILDCARD
    return _each(field, value, items, parse_port)


def _id(field: str, text: object) -> str:
    return parse_number(field, text, 0, 4294967294, "numeric id")


def parse_ids(field: str, value: object) -> tuple:
    items = split_list(value, field)
    if not items:
        raise ConfigError(field, value, "at least one numeric id is required")
    return _each(field, value, items, _id)


def parse_owner_groups(field: str, value: object, wildcard: bool) -> tuple:
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


def parse_interfaces(field: str, value: object) -> tuple:
    items = split_list(value, field)
    for name in items:
        # Kernel rules (dev_valid_name): at most 15 bytes, no '/', ':' or whitespace.
        # iptables adds the trailing '+' wildcard, which is allowed here.
        bad = len(name.encode()) > 15 or name in (".", "..") or any(c in "/:" or c.isspace() for c in name)
        if bad:
            raise ConfigError(field, value, f"{name!r} is not a valid interface name")
    return items


# CIDR / loopback text -> canonical form or error reason. Seeded with upstream's default
# host loopback CIDR, which every pod uses: validating it would import ipaddress (~8 ms with
# its functools/collections imports) on every ADD for a value known to be valid.
_CANONICAL: dict[tuple[str, str], str | ValueError] = {("loopback", "127.0.0.1/32"): ""}


def _remember(text: tuple[str, str], result: str | ValueError) -> str | ValueError:
    # The warm node agent sees the same few CIDR lists for every pod; parsing them with
    # ipaddress each time would dominate building the config. Bounded so odd inputs
    # cannot grow it without limit.
    if len(_CANONICAL) > 1024:
        _CANONICAL.clear()
        _CANONICAL[("loopback", "127.0.0.1/32")] = ""
    _CANONICAL[text] = result
    return result


def _cidr(text: str) -> str | ValueError:
    """Canonical spelling of one CIDR, or a ValueError naming what is wrong."""
    known = _CANONICAL.get(("cidr", text))
    if known is not None:
        return known
    if "/" not in text:
        return _remember(("cidr", text), ValueError("missing /prefix"))
    import ipaddress  # lazily: most pods carry no CIDR lists

    result: str | ValueError
    try:
        # Upstream renders netip.Prefix.String(): address bits kept, IPv6 compressed.
        result = ipaddress.ip_interface(text).with_prefixlen
    except ValueError as exc:
        result = ValueError(str(exc))
    return _remember(("cidr", text), result)


def parse_cidrs(field: str, value: object, wildcard: bool) -> tuple:
    items = split_list(value, field)
    if "*" in items:
        if not wildcard:
            raise ConfigError(field, value, "'*' is not allowed here")
        if items != WILDCARD:
            raise ConfigError(field, value, "'*' cannot be combined with CIDRs")
        return WILDCARD
    out = []
    for cidr in items:
        canonical = _cidr(cidr)
        if isinstance(canonical, ValueError):
            raise ConfigError(field, value, f"{cidr!r} is not a CIDR ({canonical})")
        out.append(canonical)
    return tuple(out)


def parse_addresses(field: str, value: object, version: int) -> tuple:
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


def _loopback_reason(text: str) -> str:
    """Why ``text`` is not an IPv4 CIDR inside 127.0.0.0/8 ("" when it is)."""
    import ipaddress

    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        return f"not an IPv4 CIDR: {exc}"
    if not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        return "must lie inside 127.0.0.0/8"
    return ""


def parse_loopback_cidr(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, value, "expected an IPv4 CIDR inside 127.0.0.0/8")
    text = value.strip()
    reason = _CANONICAL.get(("loopback", text))
    if reason is None:
        reason = _remember(("loopback", text), _loopback_reason(text))
    if reason:  # loopback entries hold a reason (str), never a ValueError
        raise ConfigError(field, value, str(reason))
    return text


def parse_flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "expected true or false")
    return value


def parse_mode(field: str, value: object) -> str:
    mode = value.upper() if isinstance(value, str) else value
    if mode not in ("REDIRECT", "TPROXY"):
        raise ConfigError(field, value, "expected REDIRECT or TPROXY")
    return mode


# --- Annotation syntax -------------------------------------------------------------------------
# Upstream's plugin parses each pod annotation before it builds its config (parsePorts,
# netip.ParsePrefix, ValidateInterfaceNames), stricter than the field checks above: empty list
# items, a CIDR without a prefix or with a zero-padded one, an interface name outside
# ``^[a-zA-Z][a-zA-Z0-9_.-]*$`` are refused there. ``istio_cni.redirect``'s registry names one
# of these per annotation; its result then goes through the field checks as any other value.


class AnnotationSyntaxError(ValueError):
    """An annotation value upstream's parser refuses; the reader (``istio_cni.redirect``) attaches
    the key and turns it into ``InvalidAnnotation``."""


def annotation_text(value: str) -> str:
    return value


def annotation_mode(value: str) -> str:
    if value not in ("REDIRECT", "TPROXY"):
        raise AnnotationSyntaxError("expected REDIRECT or TPROXY")
    return value


def annotation_ports(value: str, wildcard: bool = False) -> tuple:
    """Upstream's parsePorts: the whole value trimmed, empty is valid, every comma-separated
    item a base-10 port 0-65535 (whitespace around items tolerated, empty items are not).
    The wildcard is the exact value ``*`` (upstream compares before trimming)."""
    if wildcard and value == "*":
        return ("*",)
    text = value.strip()
    if not text:
        return ()
    ports = []
    for item in text.split(","):
        try:
            ports.append(parse_port("", item.strip()))
        except ConfigError:
            raise AnnotationSyntaxError(f"{item.strip()!r} is not a port number (0-65535)") from None
    return tuple(ports)


def annotation_ports_or_wildcard(value: str) -> tuple:
    return annotation_ports(value, wildcard=True)


def annotation_cidrs(value: str, wildcard: bool = False) -> tuple:
    """Upstream's netip.ParsePrefix per item: no whitespace, a /prefix is required."""
    if wildcard and value == "*":
        return ("*",)
    if not value:
        return ()
    import ipaddress  # lazily: most pods carry no CIDR annotations

    cidrs = []
    for item in value.split(","):
        addr, slash, bits = item.partition("/")
        if not slash or not bits.isdigit() or not bits.isascii() or (bits[0] == "0" and bits != "0"):
            raise AnnotationSyntaxError(f"{item!r} is not a CIDR (address/prefix-length)")
        try:
            ipaddress.ip_network(f"{addr}/{bits}", strict=False)
        except ValueError as exc:
            raise AnnotationSyntaxError(f"{item!r} is not a CIDR: {exc}") from None
        cidrs.append(item)
    return tuple(cidrs)


def annotation_cidrs_or_wildcard(value: str) -> tuple:
    return annotation_cidrs(value, wildcard=True)


_IFNAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_IFNAME_REST = _IFNAME_FIRST | frozenset("0123456789_.-")


def annotation_interfaces(value: str) -> tuple:
    """Upstream's ValidateInterfaceNames: every comma-separated item, trimmed, non-empty, at
    most 15 characters and matching ``^[a-zA-Z][a-zA-Z0-9_.-]*$``."""
    if not value:
        return ()
    names = []
    for item in value.split(","):
        name = item.strip()
        if not name:
            raise AnnotationSyntaxError("empty interface name")
        if len(name) > 15:
            raise AnnotationSyntaxError(f"interface name {name!r} too long (max 15 chars)")
        if name[0] not in _IFNAME_FIRST or not all(c in _IFNAME_REST for c in name):
            raise AnnotationSyntaxError(f"interface name {name!r} contains invalid characters")
        names.append(name)
    return tuple(names)
