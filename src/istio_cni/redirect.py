"""Pod -> ``RedirectConfig``: the per-pod knobs upstream's plugin reads, validated fail-closed.

Sources, as upstream's ``cni/pkg/plugin/sidecar_redirect.go`` reads them today:

* pod annotations (``ANNOTATIONS`` below: key, default when absent, validator);
* the ``istio-proxy`` container's env: ``ISTIO_META_DNS_CAPTURE`` (DNS redirect *and*
  capture-all port 53, since the plugin cannot read the pod's resolv.conf before the
  containers exist), ``ISTIO_DUAL_STACK``, ``INVALID_DROP``;
* its ``securityContext.runAsUser`` / ``runAsGroup``: the proxy's uid/gid; zero or absent
  means the default 1337 (each independently);
* fixed additions: the inbound excludes always end with 15020,15021,15090 (de-duplicated).

Deliberate differences from upstream, all toward failing closed, are listed with their
reasons in ``docs/rules.md`` ("The CNI plugin"): a non-empty env boolean that Go's
``strconv.ParseBool`` refuses is an error (upstream warns and reads false), and a ``*``
is refused early wherever upstream's rules would fail at commit time. Every rejection is
``InvalidAnnotation`` naming the key and the value.

On the plugin's ADD path: no ``re``/``json``/``dataclasses``; ``ipaddress`` only when a pod
actually carries CIDRs.
"""

from __future__ import annotations

from .decide import parse_go_bool, proxy_container, proxy_env
from .errors import InvalidAnnotation, InvalidNetNS
from .value import Value

PROXY_CONTAINER = "istio-proxy"
FIXED_INBOUND_EXCLUDES = ("15020", "15021", "15090")  # status, health, Envoy prometheus
DEFAULT_PROXY_ID = "1337"

ENV_DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"
ENV_DUAL_STACK = "ISTIO_DUAL_STACK"
ENV_INVALID_DROP = "INVALID_DROP"


class _Invalid(ValueError):
    """A validator's complaint; turned into ``InvalidAnnotation`` with the key attached."""


def _any(value: str) -> str:
    return value


def _mode(value: str) -> str:
    if value not in ("REDIRECT", "TPROXY"):
        raise _Invalid("expected REDIRECT or TPROXY")
    return value


def _port_list(value: str, wildcard: bool = False) -> tuple:
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
        item = item.strip()
        if not (item.isdigit() and item.isascii()) or int(item) > 65535:
            raise _Invalid(f"{item!r} is not a port number (0-65535)")
        ports.append(str(int(item)))
    return tuple(ports)


def _port_list_or_wildcard(value: str) -> tuple:
    return _port_list(value, wildcard=True)


def _cidr_list(value: str, wildcard: bool = False) -> tuple:
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
            raise _Invalid(f"{item!r} is not a CIDR (address/prefix-length)")
        try:
            ipaddress.ip_network(f"{addr}/{bits}", strict=False)
        except ValueError as exc:
            raise _Invalid(f"{item!r} is not a CIDR: {exc}") from None
        cidrs.append(item)
    return tuple(cidrs)


def _cidr_list_or_wildcard(value: str) -> tuple:
    return _cidr_list(value, wildcard=True)


_IFNAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_IFNAME_REST = _IFNAME_FIRST | frozenset("0123456789_.-")


def _interfaces(value: str) -> tuple:
    """Upstream's ValidateInterfaceNames: every comma-separated item, trimmed, non-empty, at
    most 15 characters and matching ``^[a-zA-Z][a-zA-Z0-9_.-]*$``."""
    if not value:
        return ()
    names = []
    for item in value.split(","):
        name = item.strip()
        if not name:
            raise _Invalid("empty interface name")
        if len(name) > 15:
            raise _Invalid(f"interface name {name!r} too long (max 15 chars)")
        if name[0] not in _IFNAME_FIRST or not all(c in _IFNAME_REST for c in name):
            raise _Invalid(f"interface name {name!r} contains invalid characters")
        names.append(name)
    return tuple(names)


class Annotation(Value):
    """One pod annotation the plugin reads: its key, the value used when it is absent, and
    the validator that turns the text into what the rule config takes (or raises)."""

    # key: str
    # default: str
    # parse: callable(str) -> object
    __slots__ = ("key", "default", "parse")


# Every annotation upstream's plugin reads, in the order it reads them. ``inject`` and
# ``status`` decide *whether* to redirect (istio_cni.decide). Upstream's registry also lists
# ``status.sidecar.istio.io/port`` but never reads it (the injector already folds the status
# port into excludeInboundPorts), so it is neither read nor validated here either.
ANNOTATIONS = {
    "inject": Annotation("sidecar.istio.io/inject", "", _any),
    "status": Annotation("sidecar.istio.io/status", "", _any),
    "redirectMode": Annotation("sidecar.istio.io/interceptionMode", "REDIRECT", _mode),
    "includeIPCidrs": Annotation(
        "traffic.sidecar.istio.io/includeOutboundIPRanges", "*", _cidr_list_or_wildcard),
    "excludeIPCidrs": Annotation("traffic.sidecar.istio.io/excludeOutboundIPRanges", "", _cidr_list),
    "excludeInboundPorts": Annotation(
        "traffic.sidecar.istio.io/excludeInboundPorts", "15020", _port_list_or_wildcard),
    "includeInboundPorts": Annotation(
        "traffic.sidecar.istio.io/includeInboundPorts", "*", _port_list_or_wildcard),
    "excludeOutboundPorts": Annotation(
        "traffic.sidecar.istio.io/excludeOutboundPorts", "15020", _port_list),
    "includeOutboundPorts": Annotation("traffic.sidecar.istio.io/includeOutboundPorts", "", _port_list),
    "excludeInterfaces": Annotation("traffic.sidecar.istio.io/excludeInterfaces", "", _interfaces),
    # The preferred key wins when both are present; the 2019 one is still honoured.
    "rerouteVirtualInterfaces": Annotation("istio.io/reroute-virtual-interfaces", "", _interfaces),
    "kubevirtInterfaces": Annotation("traffic.sidecar.istio.io/kubevirtInterfaces", "", _interfaces),
}

# RedirectConfig field -> where its value came from, to name the culprit if the rule config
# still refuses a value the annotation layer let through.
_SOURCE = {
    "interception_mode": "redirectMode", "outbound_ip_ranges_include": "includeIPCidrs",
    "outbound_ip_ranges_exclude": "excludeIPCidrs", "inbound_ports_exclude": "excludeInboundPorts",
    "inbound_ports_include": "includeInboundPorts", "outbound_ports_exclude": "excludeOutboundPorts",
    "outbound_ports_include": "includeOutboundPorts", "exclude_interfaces": "excludeInterfaces",
}


def read_annotation(name: str, annotations: dict):
    """The parsed value of registry entry ``name``: the annotation when present, else the
    default. A present but invalid value raises ``InvalidAnnotation`` (never a fallback)."""
    spec = ANNOTATIONS[name]
    raw = annotations.get(spec.key, spec.default)
    if not isinstance(raw, str):
        raise InvalidAnnotation(f"annotation {spec.key}={raw!r} is invalid: not a string")
    try:
        return spec.parse(raw)
    except _Invalid as exc:
        raise InvalidAnnotation(f"annotation {spec.key}={raw!r} is invalid: {exc}") from None


def _mapping(obj, what: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidAnnotation(f"pod {what} is not an object: {obj!r}")
    return obj


def _env_flag(env: dict, name: str) -> bool:
    """Go's strconv.ParseBool spellings. Absent or empty (a ``valueFrom`` entry reads as
    empty, as upstream reads it) is false, as upstream; any other word fails the ADD where
    upstream warns and reads false (docs/rules.md, "The CNI plugin")."""
    raw = env.get(name, "")
    if raw == "":
        return False
    value = parse_go_bool(raw)
    if value is None:
        raise InvalidAnnotation(
            f"{PROXY_CONTAINER} env {name}={raw!r} is invalid: expected one of "
            "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False")
    return value


def _proxy_id(security: dict, field: str) -> str:
    value = security.get(field)
    if value is None or value == 0:
        return DEFAULT_PROXY_ID
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 0xFFFFFFFE:
        raise InvalidAnnotation(
            f"{PROXY_CONTAINER} securityContext.{field}={value!r} is invalid: expected a numeric id"
        )
    return str(value)


def _with_fixed_excludes(ports: tuple) -> tuple:
    return tuple(dict.fromkeys(ports + FIXED_INBOUND_EXCLUDES))


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_V6_LOOPBACK = b"\0" * 15 + b"\1"


def _address_family(text: str) -> tuple:
    """(family, counts) of one netns address (``/prefix`` allowed), as upstream's getLocalIP
    judges it with netip: IPv4-mapped is IPv4; loopback, link-local unicast and link-local
    multicast do not count. ``_socket.inet_pton`` rather than ``ipaddress`` (about 10 ms to
    import, paid on every ADD). Raises ``ValueError`` for text that is not an address."""
    import _socket

    addr = text.partition("/")[0]
    try:
        raw = _socket.inet_pton(_socket.AF_INET6 if ":" in addr else _socket.AF_INET, addr)
    except (OSError, UnicodeError):
        raise ValueError(f"{text!r} is not an IP address") from None
    if len(raw) == 16 and raw[:12] == _V4_MAPPED:
        raw = raw[12:]
    if len(raw) == 4:
        return 4, not (raw[0] == 127 or raw[:2] == b"\xa9\xfe" or raw[:3] == b"\xe0\0\0")
    link_local = raw[0] == 0xFE and raw[1] & 0xC0 == 0x80
    link_local_multicast = raw[0] == 0xFF and raw[1] & 0x0F == 0x02
    return 6, not (raw == _V6_LOOPBACK or link_local or link_local_multicast)


def ipv6_enabled(addresses, dual_stack: bool) -> bool:
    """Upstream's getLocalIP over the pod netns' own addresses (``netfilter.routes.
    local_addresses``: kernel dump order, every IPv4 address before any IPv6 one).

    Loopback, link-local unicast and link-local multicast addresses do not count; an
    IPv4-mapped IPv6 address counts as IPv4. Without dual-stack the first address that
    counts decides the family; with it, any IPv6 one turns IPv6 on. A netns with no such
    address fails the ADD, as upstream fails it ("no valid local IP address found").

    Which families have an address that counts is all that matters, so the order of
    ``addresses`` does not (a ``prevResult`` listing IPv6 first decides as the kernel's
    IPv4-first dump would)."""
    families = {family for family, counts in map(_address_family, addresses) if counts}
    if 6 in families and (dual_stack or 4 not in families):
        return True
    if 4 in families:
        return False
    raise InvalidNetNS("no valid local IP address found in the pod network namespace",
                       "upstream needs one to decide on IPv6: " + (", ".join(addresses) or "no addresses"))


def redirect_from_pod(pod: dict, addresses=None):
    """The ``RedirectConfig`` for ``pod`` (the Pod object as the API returns it, a dict).

    ``addresses`` are the pod netns' own addresses (``netfilter.routes.local_addresses``,
    read inside the netns); they decide IPv6 as upstream decides it. ``None`` leaves IPv6 off
    without looking (rule previews and tests that have no netns).
    """
    from .rules.config import ConfigError, RedirectConfig

    if not isinstance(pod, dict):
        raise InvalidAnnotation(f"pod is not an object: {type(pod).__name__}")
    annotations = _mapping(_mapping(pod.get("metadata"), "metadata").get("annotations"), "annotations")
    values = {name: read_annotation(name, annotations) for name in ANNOTATIONS if name not in
              ("rerouteVirtualInterfaces", "kubevirtInterfaces")}
    # As upstream: the deprecated key is only read (and validated) when the new one is absent.
    reroute_new = ANNOTATIONS["rerouteVirtualInterfaces"].key in annotations
    reroute = read_annotation("rerouteVirtualInterfaces" if reroute_new else "kubevirtInterfaces",
                              annotations)
    exclude_inbound = values["excludeInboundPorts"]
    if exclude_inbound == ("*",):
        if values["includeInboundPorts"] == ("*",):
            key = ANNOTATIONS["excludeInboundPorts"].key
            raise InvalidAnnotation(
                f"annotation {key}='*' is invalid while all inbound ports are captured "
                "(upstream would write it as a port and fail at commit)")
        exclude_inbound = ()  # upstream reads the exclude list only when including '*'

    proxy = proxy_container(pod) or {}
    env = proxy_env(pod)
    security = _mapping(proxy.get("securityContext"), "istio-proxy securityContext")
    dns = _env_flag(env, ENV_DNS_CAPTURE)
    dual_stack = _env_flag(env, ENV_DUAL_STACK)
    fields = {
        "interception_mode": values["redirectMode"],
        "proxy_uids": (_proxy_id(security, "runAsUser"),),
        "proxy_gids": (_proxy_id(security, "runAsGroup"),),
        "outbound_ip_ranges_include": values["includeIPCidrs"],
        "outbound_ip_ranges_exclude": values["excludeIPCidrs"],
        "inbound_ports_include": values["includeInboundPorts"],
        "inbound_ports_exclude": _with_fixed_excludes(exclude_inbound),
        "outbound_ports_include": values["includeOutboundPorts"],
        "outbound_ports_exclude": values["excludeOutboundPorts"],
        "exclude_interfaces": values["excludeInterfaces"],
        "reroute_virtual_interfaces": reroute,
        "redirect_dns": dns,
        "capture_all_dns": dns,
        "drop_invalid": _env_flag(env, ENV_INVALID_DROP),
        "dual_stack": dual_stack,
        "enable_ipv6": False if addresses is None else ipv6_enabled(addresses, dual_stack),
    }
    try:
        return RedirectConfig(**fields)
    except ConfigError as exc:
        source = ANNOTATIONS[_SOURCE[exc.field]].key if exc.field in _SOURCE else exc.field
        raise InvalidAnnotation(f"{source}: {exc}") from None
