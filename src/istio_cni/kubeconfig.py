"""Read the plugin's kubeconfig the way client-go does, or refuse it with code 7 naming the field.

client-go (``clientcmd.Load``) turns the file into JSON with sigs.k8s.io/yaml, which parses
it as YAML 1.1 with yaml.v2 (``yes``/``no``/``on``/``off``/``y``/``n``... are booleans), and
then fills typed fields with Go's encoding/json. So, here as there:

* a boolean field (``insecure-skip-tls-verify``) takes only a boolean: ``"false"`` (quoted, or
  a JSON string), ``0`` or ``disabled`` are errors, never a silent "skip verification";
* string fields take only strings, ``*-data`` fields only padded standard base64 (CR/LF
  ignored), lists only lists, objects only objects; ``null`` means absent;
* two entries of one list with the same name are an error (client-go's conversion says so).

Parsing: JSON (what our installer writes, JSON being YAML) takes the fast path through the
plugin's JSON codec; anything else is parsed by PyYAML (``CSafeLoader`` when built with
libyaml), imported only on that path: ``import yaml`` costs ~36 ms per exec. The loader adds
yaml.v2's ``y``/``n`` booleans and keeps timestamps as strings, as yaml.v2 does for untyped
values. Multi-document files, a byte-order mark, invalid UTF-8, files over ``MAX_BYTES``
are refused. No message quotes a value from the file (only field paths), and ``repr`` of a
``Cluster`` shows no credential; tokens and key data are registered with
``errors.register_secret`` so no error or log line can carry them.
"""

from __future__ import annotations

from . import errors
from .value import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import Any

MAX_BYTES = 1 << 20  # kubeconfigs with embedded certificates are a few KiB

_SECRET_FIELDS = ("token", "client_key_data")
_HIDDEN_FIELDS = ("token", "ca_data", "client_cert_data", "client_key_data")
_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class KubeconfigError(errors.InvalidNetworkConfig, ValueError):
    """The kubeconfig is missing, unreadable, malformed or names no usable cluster/user (code 7)."""


class Cluster(Value):
    """What the plugin needs to talk to the API server (from the current context)."""

    __slots__ = (
        "server",
        "ca_file",
        "ca_data",
        "insecure",
        "token",
        "token_file",
        "client_cert_file",
        "client_cert_data",
        "client_key_file",
        "client_key_data",
        "namespace",
    )
    server: str
    ca_file: str
    ca_data: str
    insecure: bool
    token: str
    token_file: str
    client_cert_file: str
    client_cert_data: str
    client_key_file: str
    client_key_data: str
    namespace: str

    def __repr__(self) -> str:
        def show(name: str) -> str:
            val = getattr(self, name)
            return f"<{len(val)} chars hidden>" if name in _HIDDEN_FIELDS and val else repr(val)

        return f"Cluster({', '.join(f'{n}={show(n)}' for n in self.__slots__)})"


# ---- reading and parsing ----------------------------------------------------------------------


def _read(path: str) -> bytes:
    from .transport import regular_file

    try:
        regular_file(path, "kubeconfig", MAX_BYTES)  # a FIFO would block the open for good
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e.strerror}") from None
    except ValueError as e:  # not a regular file, too large, or a NUL in the path
        if "\0" in path:
            raise KubeconfigError("the kubeconfig path is not a usable file name") from None
        raise KubeconfigError(str(e)) from None
    if len(data) > MAX_BYTES:
        raise KubeconfigError(f"kubeconfig {path} is larger than {MAX_BYTES} bytes")
    return data


def _yaml_loader(yaml: Any) -> type:
    base = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
    import re

    # The base is chosen at run time (CSafeLoader only when PyYAML was built with libyaml).
    class Loader(base):  # type: ignore[valid-type,misc]  # a run-time choice of base class
        """PyYAML's safe loader resolving plain scalars as yaml.v2 (client-go) does."""

        bool_values = dict(base.bool_values, y=True, n=False)

    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
    Loader.add_constructor("tag:yaml.org,2002:timestamp", base.construct_yaml_str)
    return Loader


def _yaml_problem(e: Exception) -> str:
    """A PyYAML error without its snippet of the file (which could hold a token)."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or "not valid YAML"
    if "'" in problem or '"' in problem:  # quotes a tag, an anchor or a character from the file
        problem = problem.split("'")[0].split('"')[0].rstrip(" :") or "not valid YAML"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"not valid YAML: {problem}{where}"


def _parse(data: bytes, path: str) -> object:
    if data.startswith(b"\xef\xbb\xbf"):
        raise KubeconfigError(f"kubeconfig {path} starts with a byte-order mark; save it as UTF-8 without one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KubeconfigError(f"kubeconfig {path} is not UTF-8 (byte {e.start})") from None
    if text.lstrip(" \t\r\n").startswith("{"):
        from ._fastpath import json_loads

        try:
            return json_loads(text)
        except ValueError:
            pass  # not JSON (a YAML flow mapping, or broken): YAML decides, as in client-go
    try:
        import yaml
    except ImportError:
        raise KubeconfigError(f"kubeconfig {path} is YAML and PyYAML is missing from the plugin bundle") from None
    try:
        return yaml.load(text, Loader=_yaml_loader(yaml))
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig {path}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise KubeconfigError(f"kubeconfig {path}: nesting too deep") from None


# ---- typed fields, as Go's encoding/json fills client-go's v1.Config -------------------------


class _Fields:
    """Typed reads from one object of the document; errors name the field's path."""

    __slots__ = ("obj", "where", "path")

    def __init__(self, obj: object, where: str, path: str) -> None:
        if obj is None:
            obj = {}
        if not isinstance(obj, dict):
            raise KubeconfigError(f"kubeconfig {path}: {where or 'the document'} must be a mapping")
        self.obj, self.where, self.path = obj, where, path

    def fail(self, key: str, what: str) -> KubeconfigError:
        return KubeconfigError(f"kubeconfig {self.path}: {self.where}{key} {what}")

    def string(self, key: str) -> str:
        val = self.obj.get(key)
        if val is None:
            return ""
        if not isinstance(val, str):
            raise self.fail(key, "must be a string")
        if "\0" in val or not (val.isascii() or _utf8(val)):
            raise self.fail(key, "holds a NUL or an invalid character")
        return val

    def boolean(self, key: str) -> bool:
        val = self.obj.get(key)
        if val is None:
            return False
        if val is not True and val is not False:
            raise self.fail(key, "must be a boolean (true or false, unquoted)")
        return val

    def b64(self, key: str) -> str:
        val = self.string(key)
        body = val.replace("\r", "").replace("\n", "")
        data = body.rstrip("=")
        if len(body) % 4 or len(body) - len(data) > 2 or not _B64.issuperset(data):
            raise self.fail(key, "is not valid base64 (standard alphabet, padded)")
        return body

    def sub(self, key: str) -> _Fields:
        return _Fields(self.obj.get(key), f"{self.where}{key}.", self.path)

    def named(self, key: str) -> dict:
        """A list of ``{name, <key singular>}`` entries -> {name: entry} (duplicates refused)."""
        items = self.obj.get(key)
        if items is None:
            return {}
        if not isinstance(items, list):
            raise self.fail(key, "must be a list")
        out: dict = {}
        for i, item in enumerate(items):
            entry = _Fields(item, f"{self.where}{key}[{i}].", self.path)
            name = entry.string("name")
            if name in out:
                raise entry.fail("name", f"repeats the name of an earlier entry of {key}")
            out[name] = entry
        return out


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cluster_fields(c: _Fields) -> dict:
    return {
        "server": c.string("server"),
        "ca_file": c.string("certificate-authority"),
        "ca_data": c.b64("certificate-authority-data"),
        "insecure": c.boolean("insecure-skip-tls-verify"),
        "tls_server_name": c.string("tls-server-name"),
        "proxy_url": c.string("proxy-url"),
        "disable_compression": c.boolean("disable-compression"),
    }


def _user_fields(u: _Fields) -> dict:
    out = {
        "token": u.string("token"),
        "token_file": u.string("tokenFile"),
        "client_cert_file": u.string("client-certificate"),
        "client_cert_data": u.b64("client-certificate-data"),
        "client_key_file": u.string("client-key"),
        "client_key_data": u.b64("client-key-data"),
        "username": u.string("username"),
        "password": u.string("password"),
        "as": u.string("as"),
    }
    for name in _SECRET_FIELDS + ("password",):
        errors.register_secret(out[name])
    return out


def _context_fields(c: _Fields) -> dict:
    return {"cluster": c.string("cluster"), "user": c.string("user"), "namespace": c.string("namespace")}


def _server(server: str, where: str, path: str) -> str:
    from .transport import split_server

    if not server:
        raise KubeconfigError(f"kubeconfig {path}: {where}server is empty")
    try:
        split_server(server)
    except ValueError:
        raise KubeconfigError(
            f"kubeconfig {path}: {where}server is not a usable http(s) URL "
            "(scheme://host[:port][/path], IPv6 in brackets, ASCII host, port 1-65535)"
        ) from None
    host = server.partition("://")[2].partition("/")[0]
    if not host.isascii():
        raise KubeconfigError(f"kubeconfig {path}: {where}server host must be ASCII (use punycode)")
    return server.rstrip("/")


def resolve(doc: object, path: str = "<kubeconfig>") -> Cluster:
    """The current context's cluster and user from a parsed kubeconfig document.

    Every entry of ``clusters``/``users``/``contexts`` is type-checked (client-go decodes the
    whole file), then ``current-context`` (or the only context, when none is named) picks one."""
    top = _Fields(doc, "", path)
    for key in ("apiVersion", "kind"):
        top.string(key)
    cluster_entries, ctx_entries = top.named("clusters"), top.named("contexts")
    clusters = {n: _cluster_fields(e.sub("cluster")) for n, e in cluster_entries.items()}
    users = {n: _user_fields(e.sub("user")) for n, e in top.named("users").items()}
    contexts = {n: _context_fields(e.sub("context")) for n, e in ctx_entries.items()}
    where = {n: e.where for n, e in ctx_entries.items()}
    name = top.string("current-context")
    if not name and len(contexts) == 1:
        name = next(iter(contexts))
    if name not in contexts:
        raise KubeconfigError(f"kubeconfig {path}: current-context names no entry of contexts")
    ctx = contexts[name]
    if ctx["cluster"] not in clusters:
        raise KubeconfigError(f"kubeconfig {path}: {where[name]}context.cluster names no entry of clusters")
    cluster = clusters[ctx["cluster"]]
    user = {}
    if ctx["user"]:
        if ctx["user"] not in users:
            raise KubeconfigError(f"kubeconfig {path}: {where[name]}context.user names no entry of users")
        user = users[ctx["user"]]
    return Cluster(
        server=_server(cluster["server"], cluster_entries[ctx["cluster"]].where + "cluster.", path),
        ca_file=cluster["ca_file"],
        ca_data=cluster["ca_data"],
        insecure=cluster["insecure"],
        token=user.get("token", ""),
        token_file=user.get("token_file", ""),
        client_cert_file=user.get("client_cert_file", ""),
        client_cert_data=user.get("client_cert_data", ""),
        client_key_file=user.get("client_key_file", ""),
        client_key_data=user.get("client_key_data", ""),
        namespace=ctx["namespace"],
    )


def load(path: str) -> Cluster:
    """Read, parse and resolve the kubeconfig at ``path``; ``KubeconfigError`` (code 7) if unusable."""
    doc = _parse(_read(path), path)
    if doc is None:
        raise KubeconfigError(f"kubeconfig {path} is empty")
    return resolve(doc, path)
