"""CNI errors: one class per spec error code, each rendered as the spec's error JSON.

CNI SPEC.md "Error" section: the plugin exits non-zero and prints
``{"cniVersion", "code", "msg", "details"}`` on stdout. Codes 1-99 are reserved by the
spec (8 and 999 are libcni conventions); 100+ are ours. ``skel`` never wraps a
``CNIError`` in another one, and turns any other exception into ``InternalError``
through ``internal_error`` (types and frames only: no reprs, no values).

Secrets: whoever reads a credential calls ``register_secret``; ``to_dict`` and the logger
pass every message through ``redact``, so a token that slipped into a message by any path
leaves the process as ``[redacted]``.
"""

from __future__ import annotations

_BY_CODE: dict[int, type[CNIError]] = {}


# ---- secrets: registered once where they are read, removed from everything we print -------

REDACTED = "[redacted]"
_SECRETS: set[str] = set()
_MIN_SECRET = 6  # shorter strings are not credentials; redacting them would garble messages


def register_secret(value: str | bytes) -> None:
    """Remember a credential (bearer token, private key data) read by this process, so that
    ``redact`` removes it from every error and log line, whatever path it took there."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        for v in {value, value.strip()}:
            if len(v) >= _MIN_SECRET:
                _SECRETS.add(v)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    if _SECRETS and isinstance(text, str):
        for secret in _SECRETS:
            if secret in text:
                text = text.replace(secret, REDACTED)
    return text


class CNIError(Exception):
    """Base class. ``code`` and the default ``msg`` are class attributes."""

    code: int = 999
    msg: str = "internal error"

    def __init__(self, msg: str | None = None, details: str = "") -> None:
        self.msg = msg if msg is not None else type(self).msg
        self.details = details
        super().__init__(self.msg if not details else f"{self.msg}: {details}")

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "code" in cls.__dict__:
            if cls.code in _BY_CODE:
                raise TypeError(f"CNI error code {cls.code} registered twice")
            _BY_CODE[cls.code] = cls

    def to_dict(self, cni_version: str) -> dict:
        out: dict = {"cniVersion": cni_version, "code": self.code, "msg": redact(str(self.msg))}
        if self.details:
            out["details"] = redact(str(self.details))
        return out


def error_class(code: int) -> type[CNIError]:
    """The registered class for ``code`` (tests and the agent protocol use this)."""
    return _BY_CODE[code]


class IncompatibleCNIVersion(CNIError):
    code, msg = 1, "incompatible CNI version"


class UnsupportedField(CNIError):
    code, msg = 2, "unsupported field in network configuration"


class UnknownContainer(CNIError):
    code, msg = 3, "container unknown or does not exist"


class InvalidEnvironmentVariables(CNIError):
    code, msg = 4, "invalid necessary environment variables"


class IOFailure(CNIError):
    code, msg = 5, "I/O failure"


class DecodingFailure(CNIError):
    code, msg = 6, "failed to decode content"


class InvalidNetworkConfig(CNIError):
    code, msg = 7, "invalid network config"


class InvalidNetNS(CNIError):
    code, msg = 8, "invalid network namespace"


class TryAgainLater(CNIError):
    code, msg = 11, "try again later"


class PluginNotAvailable(CNIError):
    code, msg = 50, "plugin not available"


class LimitedConnectivity(CNIError):
    code, msg = 51, "plugin not available, existing containers may have limited connectivity"


class InternalError(CNIError):
    code, msg = 999, "internal error"


# ---- plugin-specific codes (100+) -------------------------------------------------


class NetfilterError(CNIError):
    """A netfilter commit/check/remove failed; ``errno`` is the kernel/library errno."""

    code, msg = 100, "netfilter operation failed"

    def __init__(self, msg: str | None = None, details: str = "", errno: int = 0) -> None:
        super().__init__(msg, details)
        self.errno = errno


class KubernetesLookupError(CNIError):
    """The pod lookup failed for a reason retrying will not fix (401/403, bad kubeconfig)."""

    code, msg = 101, "kubernetes pod lookup failed"


class InvalidAnnotation(CNIError):
    """A pod annotation or proxy setting has a value the rule engine cannot use."""

    code, msg = 102, "invalid pod annotation"


class RulesMismatch(CNIError):
    """CHECK found the netns rules differ from what ADD would commit now."""

    code, msg = 103, "redirect rules missing or different"


# ---- network namespaces: raised by the compiled ``_fastpath`` (and its test twin) -------------


class NotANetns(OSError):
    """The path exists but is not a network namespace (plain file, other ns type). An
    ``OSError``, not a CNI error: callers decide what it means (``skel.check_netns``: code 8)."""


class NetnsRestoreFailed(BaseException):
    """setns back to the original namespace failed: the thread is in the wrong netns. A
    ``BaseException`` so that ordinary ``except Exception`` handlers do not swallow it: the
    plugin reports it and exits, the node agent ends its process."""


# ---- the pod GET on a C thread: raised by ``_fastpath.HttpsGet`` ------------------------------


class TLSFailure(OSError):
    """The TLS handshake or stream failed (what ``_ssl.SSLError`` is on the Python path): an
    ``OSError``, so the pod lookup retries it like any transport failure."""


class TLSMaterialError(ValueError):
    """The kubeconfig's CA, client certificate or key cannot be loaded: a configuration
    problem, reported at once as the Python path reports it (``k8s._client``)."""


class TLSUnavailable(Exception):
    """No usable OpenSSL for the C client (no libssl.so.3, a function missing, no thread):
    the lookup falls back to ``_ssl``."""


# ---- internal errors: where it broke, never the values it broke on ---------------------------


def describe(exc: BaseException) -> str:
    """``exc``'s message, safe to print: never its repr (a ``UnicodeDecodeError``'s repr
    holds the bytes it was decoding, e.g. a whole token file), never a missing key (a
    ``KeyError``'s message is that key's repr), shortened, registered secrets redacted."""
    if isinstance(exc, UnicodeError) and hasattr(exc, "reason"):
        where = getattr(exc, "start", None)
        text = f"{getattr(exc, 'encoding', 'codec')}: {exc.reason}"
        return text + (f" at position {where}" if where is not None else "")
    if isinstance(exc, KeyError):
        return "missing key"
    try:
        text = str(exc)
    except Exception:
        text = ""
    if len(text) > 300:
        text = text[:300] + "..."
    return redact(text)


def internal_error(exc: BaseException) -> InternalError:
    """A code-999 error for an exception nobody turned into a ``CNIError``: the types, the
    frames (file, line, function) and safe messages of its chain; no locals, no source
    lines, no reprs."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    lines = ["Traceback (most recent call last):"]
    for link in reversed(chain):
        tb = link.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
            tb = tb.tb_next
        lines.append(f"{type(link).__name__}: {describe(link)}")
    return InternalError(f"internal error: {type(exc).__name__}: {describe(exc)}", "\n".join(lines))
