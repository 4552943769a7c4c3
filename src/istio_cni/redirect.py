"""Pod -> ``RedirectConfig``: the per-pod knobs upstream's plugin reads, validated fail-closed.

Sources, as upstream's ``cni/pkg/plugin/sidecar_redirect.go`` reads them today:

* pod annotations (``ANNOTATIONS`` below: key, default when absent, validator);
* the ``istio-proxy`` container's env: ``ISTIO_META_DNS_CAPTURE`` (DNS redirect *and*
  capture-all port 53, since the plugin cannot read the pod's resolv.conf before the
  containers exist), ``ISTIO_DUAL_STACK``, ``INVALID_DROP``;
* its ``securityContext.runAsUser`` / ``runAsGroup``: the proxy's uid/gid; zero or absent
  means the default 1337 (each independently);
* fixed additions: the inbound excludes always end with 15020,15021,15090 (de-duplicated).

Deliberate differences from upstream, all toward failing closed: a bad env boolean is an
error (upstream logs a warning and reads it as false, silently skipping DNS capture or the
invalid-packet drop), and ``*`` is refused where the rule engine cannot express it (the
exclude lists and include-outbound-ports; upstream accepts it and produces rules that fail
at commit time). Every rejection is ``InvalidAnnotation`` naming the key and the value.

On the plugin's ADD path: no ``re``/``json``/``dataclasses``; ``ipaddress`` only when a pod
actually carries CIDRs.
"""

from __future__ import annotations

from .errors import InvalidAnnotation, InvalidNetworkConfig
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
    item a base-10 port 0-65535 (whitespace around items tolerated, empty items are not)."""
    text = value.strip()
    if wildcard and text == "*":
        return ("*",)
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


def _interfaces(value: str) -> tuple:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        # The kernel's dev_valid_name: 1-15 bytes, no '/', ':' or whitespace, not . or ..
        if len(name.encode()) > 15 or name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
            raise _Invalid(f"{name!r} is not a valid interface name")
    return names


class Annotation(Value):
    """One pod annotation the plugin reads: its key, the value used when it is absent, and
    the validator that turns the text into what the rule config takes (or raises)."""

    # key: str
    # default: str
    # parse: callable(str) -> object
    __slots__ = ("key", "default", "parse")


# Every annotation upstream's plugin reads, in the order it reads them. ``inject`` and
# ``status`` decide *whether* to redirect (istio_cni.decide); the status port is validated
# but, as upstream, not used: the injector already folds it into excludeInboundPorts.
ANNOTATIONS = {
    "inject": Annotation("sidecar.istio.io/inject", "", _any),
    "status": Annotation("sidecar.istio.io/status", "", _any),
    "redirectMode": Annotation("sidecar.istio.io/interceptionMode", "REDIRECT", _mode),
    "ports": Annotation("status.sidecar.istio.io/port", "", _port_list),
    "includeIPCidrs": Annotation(
        "traffic.sidecar.istio.io/includeOutboundIPRanges", "*", _cidr_list_or_wildcard),
    "excludeIPCidrs": Annotation("traffic.sidecar.istio.io/excludeOutboundIPRanges", "", _cidr_list),
    "excludeInboundPorts": Annotation(
        "traffic.sidecar.istio.io/excludeInboundPorts", "15020", _port_list),
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


def proxy_container(pod: dict) -> dict | None:
    """The ``istio-proxy`` container, looked up in containers and initContainers (native
    sidecars on Kubernetes >= 1.28 run the proxy as a restartable init container)."""
    spec = _mapping(pod.get("spec"), "spec")
    for group in ("containers", "initContainers"):
        for container in spec.get(group) or ():
            if isinstance(container, dict) and container.get("name") == PROXY_CONTAINER:
                return container
    return None


def _env_flag(env: dict, name: str) -> bool:
    """Go's strconv.ParseBool spellings; anything else fails the ADD (see module doc)."""
    raw = env.get(name)
    if raw is None:
        return False
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise InvalidAnnotation(f"{PROXY_CONTAINER} env {name}={raw!r} is invalid: expected true or false")


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


def _address_family(text: str) -> tuple:
    """(family, usable) of one pod address, ``usable`` meaning not loopback or link-local.

    Hand-written rather than ``ipaddress`` (about 10 ms to import, paid on every ADD):
    the addresses come from the primary CNI's result, so a light structural check that
    still rejects garbage is enough here.
    """
    addr = text.partition("/")[0].strip().lower()
    if addr.startswith("::ffff:") and "." in addr:  # IPv4-mapped: judge the IPv4 part
        addr = addr[7:]
    if ":" in addr:
        groups = addr.split(":")
        hexdigits = "0123456789abcdef"
        if not 3 <= len(groups) <= 8 or addr.count("::") > 1 or not all(
            len(g) <= 4 and all(c in hexdigits for c in g) for g in groups
        ):
            raise ValueError(text)
        head = int(groups[0] or "0", 16)
        loopback = addr == "::1" or groups[:-1] == ["0"] * 7 and groups[-1] == "1"
        return 6, not (loopback or head & 0xFFC0 == 0xFE80)
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and int(p) <= 255 for p in parts):
        raise ValueError(text)
    return 4, not (parts[0] == "127" or parts[:2] == ["169", "254"])


def ipv6_enabled(pod_ips, dual_stack: bool) -> bool:
    """Upstream's getLocalIP: the first usable (not loopback/link-local) pod address decides
    the family; with dual-stack any usable IPv6 address turns IPv6 on. ``pod_ips`` may carry
    prefixes (``prevResult.ips[].address``)."""
    for text in pod_ips or ():
        try:
            family, usable = _address_family(text)
        except (ValueError, AttributeError):
            raise InvalidNetworkConfig(f"pod IP {text!r} is not an IP address") from None
        if usable and (family == 6 or not dual_stack):
            return family == 6
    return False


def redirect_from_pod(pod: dict, pod_ips=()):
    """The ``RedirectConfig`` for ``pod`` (the Pod object as the API returns it, a dict).

    ``pod_ips`` are the addresses the primary CNI gave the pod (from ``prevResult``); they
    decide IPv6 the way upstream decides it from the netns' interface addresses.
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

    proxy = proxy_container(pod) or {}
    # An entry with only valueFrom cannot be resolved here; like upstream it does not count.
    env = {
        e["name"]: e["value"]
        for e in proxy.get("env") or ()
        if isinstance(e, dict) and isinstance(e.get("name"), str) and "value" in e
    }
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
        "inbound_ports_exclude": _with_fixed_excludes(values["excludeInboundPorts"]),
        "outbound_ports_include": values["includeOutboundPorts"],
        "outbound_ports_exclude": values["excludeOutboundPorts"],
        "exclude_interfaces": values["excludeInterfaces"],
        "reroute_virtual_interfaces": reroute,
        "redirect_dns": dns,
        "capture_all_dns": dns,
        "drop_invalid": _env_flag(env, ENV_INVALID_DROP),
        "dual_stack": dual_stack,
        "enable_ipv6": ipv6_enabled(pod_ips, dual_stack),
    }
    try:
        return RedirectConfig(**fields)
    except ConfigError as exc:
        source = ANNOTATIONS[_SOURCE[exc.field]].key if exc.field in _SOURCE else exc.field
        raise InvalidAnnotation(f"{source}: {exc}") from None
