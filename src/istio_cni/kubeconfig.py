"""Read a kubeconfig without PyYAML: the plugin's per-exec import budget has no room for it.

Kubeconfigs come in two forms: JSON (what our installer writes; JSON is YAML) and the
block YAML that kubectl, client-go and the 2019 installer write. ``parse_yaml_subset``
handles the latter: block mappings and sequences by indentation, ``- key: value`` items,
plain / single / double quoted scalars, ``#`` comments, and flow ``{}`` / ``[]`` empties.
Anything beyond that (anchors, multi-line scalars, tags) is refused with a clear error
rather than misread.
"""

from __future__ import annotations

from .value import Value


class KubeconfigError(ValueError):
    """The kubeconfig is missing, unreadable or does not name a usable cluster/user."""


class Cluster(Value):
    """What the plugin needs to talk to the API server (from the current context)."""

    __slots__ = ("server", "ca_file", "ca_data", "insecure", "token", "token_file",
                 "client_cert_file", "client_cert_data", "client_key_file", "client_key_data",
                 "namespace")


def _scalar(text: str):
    t = text.strip()
    if not t:
        return None
    if t[0] == '"':
        if len(t) < 2 or t[-1] != '"':
            raise KubeconfigError(f"unterminated double-quoted scalar: {t!r}")
        from ._fastpath import json_loads

        return json_loads(t)
    if t[0] == "'":
        if len(t) < 2 or t[-1] != "'":
            raise KubeconfigError(f"unterminated single-quoted scalar: {t!r}")
        return t[1:-1].replace("''", "'")
    if t == "{}":
        return {}
    if t == "[]":
        return []
    if t[0] in "&*!|>{[":
        raise KubeconfigError(f"unsupported YAML construct: {t!r}")
    if t in ("true", "True"):
        return True
    if t in ("false", "False"):
        return False
    if t in ("null", "~"):
        return None
    return t


def _strip_comment(line: str) -> str:
    quote = ""
    escaped = False
    for i, c in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif c == "\\" and quote == '"':
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _split_key(text: str):
    """``key: value`` -> (key, value-text) or None when ``text`` is not a mapping entry."""
    quote = ""
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == ":" and (i + 1 == len(text) or text[i + 1] == " "):
            key = _scalar(text[:i])
            return (str(key), text[i + 1:])
    return None


def parse_yaml_subset(text: str):
    lines = []
    for raw in text.splitlines():
        if raw.strip() in ("---", "..."):
            continue
        line = _strip_comment(raw).rstrip()
        if line.strip():
            if "\t" in line[: len(line) - len(line.lstrip())]:
                raise KubeconfigError("tabs are not allowed for YAML indentation")
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
    pos = 0

    def block(indent: int):
        nonlocal pos
        if pos >= len(lines):
            return None
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            return seq(lines[pos][0])
        return mapping(lines[pos][0])

    def mapping(indent: int) -> dict:
        nonlocal pos
        out: dict = {}
        while pos < len(lines) and lines[pos][0] == indent:
            kv = _split_key(lines[pos][1])
            if kv is None:
                raise KubeconfigError(f"expected 'key: value', got {lines[pos][1]!r}")
            key, rest = kv
            pos += 1
            if rest.strip():
                out[key] = _scalar(rest)
            elif pos < len(lines) and (lines[pos][0] > indent or
                                       (lines[pos][0] == indent and lines[pos][1].startswith("-"))):
                out[key] = block(lines[pos][0])
            else:
                out[key] = None
        return out

    def seq(indent: int) -> list:
        nonlocal pos
        out: list = []
        while pos < len(lines) and lines[pos][0] == indent and (
            lines[pos][1].startswith("- ") or lines[pos][1] == "-"
        ):
            item = lines[pos][1][1:].lstrip()
            if not item:
                pos += 1
                out.append(block(lines[pos][0]) if pos < len(lines) and lines[pos][0] > indent else None)
                continue
            kv = _split_key(item)
            if kv is None:
                pos += 1
                out.append(_scalar(item))
                continue
            # "- key: value" starts a mapping whose keys sit at the item's column.
            col = indent + (len(lines[pos][1]) - len(item))
            lines[pos] = (col, item)
            out.append(mapping(col))
        return out

    result = block(0)
    if pos != len(lines):
        raise KubeconfigError(f"unexpected indentation near {lines[pos][1]!r}")
    return result


def _named(items, name: str, what: str) -> dict:
    for it in items or []:
        if isinstance(it, dict) and it.get("name") == name:
            return it.get(what) or {}
    raise KubeconfigError(f"kubeconfig has no {what} named {name!r}")


def load(path: str) -> Cluster:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e.strerror}") from None
    text = data.decode("utf-8", "replace")
    try:
        if text.lstrip().startswith("{"):
            from ._fastpath import json_loads

            doc = json_loads(text)
        else:
            doc = parse_yaml_subset(text)
    except ValueError as e:
        raise KubeconfigError(f"cannot parse kubeconfig {path}: {e}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a mapping")
    ctx_name = doc.get("current-context") or ""
    contexts = doc.get("contexts") or []
    if not ctx_name and len(contexts) == 1:
        ctx_name = contexts[0].get("name", "")
    ctx = _named(contexts, ctx_name, "context")
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster")
    user = _named(doc.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
    server = cluster.get("server") or ""
    if not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"kubeconfig {path}: cluster server {server!r} is not an http(s) URL")
    return Cluster(
        server=server.rstrip("/"),
        ca_file=cluster.get("certificate-authority") or "",
        ca_data=cluster.get("certificate-authority-data") or "",
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=user.get("token") or "",
        token_file=user.get("tokenFile") or "",
        client_cert_file=user.get("client-certificate") or "",
        client_cert_data=user.get("client-certificate-data") or "",
        client_key_file=user.get("client-key") or "",
        client_key_data=user.get("client-key-data") or "",
        namespace=ctx.get("namespace") or "",
    )
