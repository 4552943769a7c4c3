"""Pod -> ``RedirectConfig``: the per-pod knobs upstream's plugin reads, validated fail-closed.

Sources, as upstream's ``cni/pkg/plugin/sidecar_redirect.go`` reads them today:

* pod annotations (``ANNOTATIONS`` below: key, default when absent, validator from
  ``rules.checks``, the ``RedirectConfig`` field it fills);
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

from .decide import (
    GO_FALSE,
    GO_TRUE,
    INJECT_KEY,
    PROXY_CONTAINER,
    STATUS_KEY,
    parse_go_bool,
    proxy_container,
    proxy_env,
)
from .errors import InvalidAnnotation, InvalidNetNS
from .rules import checks
from .value import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from .rules.config import RedirectConfig

FIXED_INBOUND_EXCLUDES = ("15020", "15021", "15090")  # status, health, Envoy prometheus
DEFAULT_PROXY_ID = "1337"

ENV_DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"
ENV_DUAL_STACK = "ISTIO_DUAL_STACK"
ENV_INVALID_DROP = "INVALID_DROP"


class Annotation(Value):
    """One pod annotation the plugin reads: its key, the value used when it is absent, the
    validator that turns the text into what the rule config takes (or raises), and the
    ``RedirectConfig`` field it fills as is (None: read by ``decide``, or combined in
    ``redirect_from_pod``). A new annotation that maps to one field is one row here."""

    __slots__ = ("key", "default", "parse", "field")
    _defaults = {"field": None}
    key: str
    default: str
    parse: Callable[[str], object]  # rules.checks.annotation_*
    field: str | None


# Every annotation upstream's plugin reads, in the order it reads them. ``inject`` and
# ``status`` decide *whether* to redirect (istio_cni.decide). Upstream's registry also lists
# ``status.sidecar.istio.io/port`` but never reads it (the injector already folds the status
# port into excludeInboundPorts), so it is neither read nor validated here either.
_T = "traffic.sidecar.istio.io/"
ANNOTATIONS = {
    "inject": Annotation(INJECT_KEY, "", checks.annotation_text),
    "status": Annotation(STATUS_KEY, "", checks.annotation_text),
    "redirectMode": Annotation(
        "sidecar.istio.io/interceptionMode", "REDIRECT", checks.annotation_mode, "interception_mode"
    ),
    "includeIPCidrs": Annotation(
        _T + "includeOutboundIPRanges", "*", checks.annotation_cidrs_or_wildcard, "outbound_ip_ranges_include"
    ),
    "excludeIPCidrs": Annotation(
        _T + "excludeOutboundIPRanges", "", checks.annotation_cidrs, "outbound_ip_ranges_exclude"
    ),
    "excludeInboundPorts": Annotation(
        _T + "excludeInboundPorts", "15020", checks.annotation_ports_or_wildcard, "inbound_ports_exclude"
    ),
    "includeInboundPorts": Annotation(
        _T + "includeInboundPorts", "*", checks.annotation_ports_or_wildcard, "inbound_ports_include"
    ),
    "excludeOutboundPorts": Annotation(
        _T + "excludeOutboundPorts", "15020", checks.annotation_ports, "outbound_ports_exclude"
    ),
    "includeOutboundPorts": Annotation(
        _T + "includeOutboundPorts", "", checks.annotation_ports, "outbound_ports_include"
    ),
    "excludeInterfaces": Annotation(_T + "excludeInterfaces", "", checks.annotation_interfaces, "exclude_interfaces"),
    # The preferred key wins when both are present; the 2019 one is still honoured.
    "rerouteVirtualInterfaces": Annotation("istio.io/reroute-virtual-interfaces", "", checks.annotation_interfaces),
    "kubevirtInterfaces": Annotation(_T + "kubevirtInterfaces", "", checks.annotation_interfaces),
}

# RedirectConfig field -> the annotation it came from, to name the culprit if the rule config
# still refuses a value the annotation layer let through.
_SOURCE = {a.field: a.key for a in ANNOTATIONS.values() if a.field}


def read_annotation(name: str, annotations: dict) -> Any:  # each row parses to its own type
    """The parsed value of registry entry ``name``: the annotation when present, else the
    default. A present but invalid value raises ``InvalidAnnotation`` (never a fallback)."""
    spec = ANNOTATIONS[name]
    raw = annotations.get(spec.key, spec.default)
    if not isinstance(raw, str):
        raise InvalidAnnotation(f"annotation {spec.key}={raw!r} is invalid: not a string")
    try:
        return spec.parse(raw)
    except checks.AnnotationSyntaxError as exc:
        raise InvalidAnnotation(f"annotation {spec.key}={raw!r} is invalid: {exc}") from None


def _mapping(obj: object, what: str) -> dict:
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
            f"{PROXY_CONTAINER} env {name}={raw!r} is invalid: expected one of " + ", ".join(GO_TRUE + GO_FALSE)
        )
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


def ipv6_enabled(addresses: Sequence[str], dual_stack: bool) -> bool:
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
    raise InvalidNetNS(
        "no valid local IP address found in the pod network namespace",
        "upstream needs one to decide on IPv6: " + (", ".join(addresses) or "no addresses"),
    )


def redirect_from_pod(pod: dict, addresses: Sequence[str] | None = None) -> RedirectConfig:
    """The ``RedirectConfig`` for ``pod`` (the Pod object as the API returns it, a dict).

    ``addresses`` are the pod netns' own addresses (``netfilter.routes.local_addresses``,
    read inside the netns); they decide IPv6 as upstream decides it. ``None`` leaves IPv6 off
    without looking (rule previews and tests that have no netns).
    """
    from .rules.config import ConfigError, RedirectConfig

    if not isinstance(pod, dict):
        raise InvalidAnnotation(f"pod is not an object: {type(pod).__name__}")
    annotations = _mapping(_mapping(pod.get("metadata"), "metadata").get("annotations"), "annotations")
    values = {
        name: read_annotation(name, annotations)
        for name in ANNOTATIONS
        if name not in ("rerouteVirtualInterfaces", "kubevirtInterfaces")
    }
    # As upstream: the deprecated key is only read (and validated) when the new one is absent.
    reroute_new = ANNOTATIONS["rerouteVirtualInterfaces"].key in annotations
    reroute = read_annotation("rerouteVirtualInterfaces" if reroute_new else "kubevirtInterfaces", annotations)
    exclude_inbound = values["excludeInboundPorts"]
    if exclude_inbound == ("*",):
        if values["includeInboundPorts"] == ("*",):
            key = ANNOTATIONS["excludeInboundPorts"].key
            raise InvalidAnnotation(
                f"annotation {key}='*' is invalid while all inbound ports are captured "
                "(upstream would write it as a port and fail at commit)"
            )
        exclude_inbound = ()  # upstream reads the exclude list only when including '*'

    proxy = proxy_container(pod) or {}
    env = proxy_env(pod)
    security = _mapping(proxy.get("securityContext"), "istio-proxy securityContext")
    dns = _env_flag(env, ENV_DNS_CAPTURE)
    dual_stack = _env_flag(env, ENV_DUAL_STACK)
    fields = {a.field: values[name] for name, a in ANNOTATIONS.items() if a.field}
    fields.update(
        {
            "proxy_uids": (_proxy_id(security, "runAsUser"),),
            "proxy_gids": (_proxy_id(security, "runAsGroup"),),
            "inbound_ports_exclude": _with_fixed_excludes(exclude_inbound),
            "reroute_virtual_interfaces": reroute,
            "redirect_dns": dns,
            "capture_all_dns": dns,
            "drop_invalid": _env_flag(env, ENV_INVALID_DROP),
            "dual_stack": dual_stack,
            "enable_ipv6": False if addresses is None else ipv6_enabled(addresses, dual_stack),
        }
    )
    try:
        return RedirectConfig(**fields)
    except ConfigError as exc:
        source = _SOURCE.get(exc.field, exc.field)
        raise InvalidAnnotation(f"{source}: {exc}") from None
