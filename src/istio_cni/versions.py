"""CNI spec versions and conversion of results between their shapes.

Result shapes (CNI SPEC.md, "Result"):

* 0.1.0 / 0.2.0: ``ip4`` / ``ip6`` objects (``ip``, ``gateway``, ``routes``) and ``dns``.
* 0.3.0 / 0.3.1 / 0.4.0: ``interfaces``, ``ips`` (each with ``version``), ``routes``, ``dns``.
* 1.0.0 / 1.1.0: as 0.4.0 but ``ips`` entries drop ``version``.

A chained plugin hands on ``prevResult``; when the runtime's conf version and the
result's own ``cniVersion`` differ we convert, as libcni's ``types.Result.GetAsVersion``.
"""

from __future__ import annotations

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"


def vtuple(v: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in v.split("."))
    except (ValueError, AttributeError):
        raise ValueError(f"malformed version {v!r}") from None
    if len(parts) != 3:
        raise ValueError(f"malformed version {v!r}")
    return parts


def _shape(v: str) -> int:
    t = vtuple(v)
    if t < (0, 3, 0):
        return 2  # 0.1/0.2 legacy ip4/ip6 shape
    if t < (1, 0, 0):
        return 3  # 0.3.x / 0.4.0
    return 1  # 1.x


def _ip_version(addr: str) -> str:
    return "6" if ":" in addr else "4"


def _from_legacy(res: dict) -> dict:
    """0.1/0.2 -> 0.3-style dict (ips with version)."""
    out: dict = {}
    ips: list[dict] = []
    routes: list[dict] = []
    for key in ("ip4", "ip6"):
        block = res.get(key)
        if not block:
            continue
        ip = {"version": key[-1], "address": block.get("ip", "")}
        if block.get("gateway"):
            ip["gateway"] = block["gateway"]
        ips.append(ip)
        routes += block.get("routes") or []
    if ips:
        out["ips"] = ips
    if routes:
        out["routes"] = routes
    if res.get("dns"):
        out["dns"] = res["dns"]
    return out


def _to_legacy(res: dict) -> dict:
    out: dict = {}
    for ip in res.get("ips") or []:
        ver = ip.get("version") or _ip_version(ip.get("address", ""))
        key = "ip4" if ver == "4" else "ip6"
        if key in out:
            continue  # legacy shape holds one address per family
        block = {"ip": ip.get("address", "")}
        if ip.get("gateway"):
            block["gateway"] = ip["gateway"]
        fam_routes = [r for r in res.get("routes") or [] if _ip_version(r.get("dst", "")) == ver]
        if fam_routes:
            block["routes"] = fam_routes
        out[key] = block
    if res.get("dns"):
        out["dns"] = res["dns"]
    return out


def convert_result(result: dict, to_version: str) -> dict:
    """Return ``result`` expressed as ``to_version`` (unchanged if the shapes agree)."""
    src_version = result.get("cniVersion") or to_version
    src, dst = _shape(src_version), _shape(to_version)
    if src == dst:
        if result.get("cniVersion") == to_version:
            return result
        out = dict(result)
        out["cniVersion"] = to_version
        return out
    body = {k: v for k, v in result.items() if k != "cniVersion"}
    if src == 2:
        body = _from_legacy(body)
    if dst == 2:
        if src == 1:
            for ip in body.get("ips") or []:
                ip.setdefault("version", _ip_version(ip.get("address", "")))
        body = _to_legacy(body)
    elif dst == 1:
        body["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in body.get("ips") or []]
        if not body["ips"]:
            del body["ips"]
    else:  # dst == 3
        ips = []
        for ip in body.get("ips") or []:
            ip = dict(ip)
            ip.setdefault("version", _ip_version(ip.get("address", "")))
            ips.append(ip)
        if ips:
            body["ips"] = ips
    return {"cniVersion": to_version, **body}
