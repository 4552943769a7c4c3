"""HTTP/1.1 GETs over TCP/TLS for a one-shot process, on the C modules ``_socket``/``_ssl``.

Why not ``http.client`` / ``ssl`` / ``socket``: in the plugin every import is paid per pod
ADD. ``http.client`` pulls in ``email``; ``ssl`` and ``socket`` build enums from every
constant (25-40 ms together here); a ``str`` host name goes through the ``idna`` codec,
which imports ``re``, ``stringprep`` and ``unicodedata``. The C modules underneath are the
same engines: OpenSSL does certificate, hostname and IP-SAN verification exactly as with
``ssl.SSLContext(PROTOCOL_TLS_CLIENT)``. Long-lived processes (the node agent) use
``ssl_context`` with the regular modules instead. The answer is read by ``http1``.
"""

from __future__ import annotations

from .http1 import time_left

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    import _socket
    import _ssl
    import ssl
    from collections.abc import Callable
    from typing import TypeVar

    from typing_extensions import Buffer

    from .kubeconfig import Cluster

    _Context = TypeVar("_Context", bound=_ssl._SSLContext)  # _ssl's context or ssl.SSLContext


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"HTTP {status} {reason}")


def host_header(host: str, port: int) -> str:
    """``host:port`` for the Host header and URLs: IPv6 literals in brackets (RFC 9110 7.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _plain(text: str, what: str) -> str:
    # A kubeconfig is operator input: a space, CR/LF or control byte in the server URL
    # would let it inject request lines or headers.
    if any(c <= " " or c == "\x7f" for c in text):
        raise ValueError(f"{what} {text[:80]!r} contains spaces or control characters")
    if not text.isascii():
        raise ValueError(f"{what} {text[:80]!r} is not ASCII: use the host's IP or punycode (xn--) form")
    return text


def split_server(server: str) -> tuple[str, str, int, str]:
    """``https://host:port/prefix`` -> (scheme, host, port, prefix); IPv6/bracketed hosts ok.

    ``ValueError`` (naming the part) for anything that is not a plain http(s) URL."""
    _plain(server, "API server URL")
    scheme, sep, rest = server.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"API server URL {server[:80]!r} is not an http(s) URL")
    hostport, slash, prefix = rest.partition("/")
    if "?" in prefix or "#" in prefix or "@" in hostport:
        raise ValueError(f"API server URL {server[:80]!r} has a query, fragment or user info")
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"API server URL {server[:80]!r} has a malformed bracketed host")
        port = tail[1:]
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    elif ":" in hostport:
        raise ValueError(f"API server URL {server[:80]!r}: IPv6 hosts must be in brackets")
    else:
        host, port = hostport, ""
    if not host or "[" in host or "]" in host or "/" in host:
        raise ValueError(f"API server URL {server[:80]!r} has no usable host")
    if port and not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise ValueError(f"API server URL {server[:80]!r} has an invalid port {port[:10]!r}")
    port_n = int(port) if port else (443 if scheme == "https" else 80)
    return scheme, host, port_n, ("/" + prefix.rstrip("/")) if slash and prefix.rstrip("/") else ""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote_segment(segment: str) -> str:
    """Percent-encode one path segment (RFC 3986 unreserved kept). Callers validate names
    first; this is the second wall, so "", "." and ".." are refused rather than encoded
    (servers decode %2E before resolving dot segments)."""
    if segment in ("", ".", ".."):
        raise ValueError(f"path segment {segment!r} is empty or a dot segment")
    raw = segment.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


def _configure(ctx: _Context, cluster: Cluster) -> _Context:
    """Trust and client credentials from the kubeconfig (``tls_material``). Works on
    ``_ssl._SSLContext`` and on its subclass ``ssl.SSLContext`` alike."""
    import _ssl

    m = tls_material(cluster)
    if m["insecure"]:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    elif "ca_pem" in m:
        ctx.load_verify_locations(None, None, m["ca_pem"].decode())
    elif "ca_file" in m:
        ctx.load_verify_locations(m["ca_file"])
    else:
        ctx.set_default_verify_paths()
    if "cert_file" in m:
        ctx.load_cert_chain(m["cert_file"], m["key_file"])
    return ctx


def lean_tls_context(cluster: Cluster) -> _ssl._SSLContext:
    """An OpenSSL context from the C module ``_ssl`` directly.

    ``import ssl`` costs 25-40 ms here (it builds enums from every OpenSSL constant) on
    every pod ADD; ``_ssl`` is the same engine without that. The context is what
    ``ssl.SSLContext(PROTOCOL_TLS_CLIENT)`` gives: TLS >= 1.2, certificate and hostname
    (or IP SAN) verification in OpenSSL, unless the kubeconfig says insecure-skip-tls-verify.

    An ADD's entry point may have started OpenSSL's set-up on a C thread
    (``_fastpath.openssl_warm_start``); it is joined first, so the context is made on warm
    caches and no thread outlives this call.
    """
    from ._fastpath import openssl_warm_wait

    openssl_warm_wait()
    import _ssl

    return _configure(_ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT), cluster)


# A CA bundle, certificate chain or key is a few KB; the system's CA bundle ~200 KB.
MAX_TLS_FILE = 4 << 20


def regular_file(path: str, what: str, limit: int = MAX_TLS_FILE) -> str:
    """``path`` if it names a regular file of at most ``limit`` bytes, else ``ValueError``:
    a FIFO, a device (``/dev/zero``) or a directory in a kubeconfig would hang or exhaust the
    lookup that reads it (OpenSSL reads a CA file to its end). Through ``posix``: see
    ``istio_cni.environ``."""
    import posix

    st = posix.stat(path)  # OSError (missing, unreadable dir) is the caller's to report
    if st.st_mode & 0o170000 != 0o100000:
        raise ValueError(f"{what} {path[:200]!r} is not a regular file")
    if st.st_size > limit:
        raise ValueError(f"{what} {path[:200]!r} is larger than {limit} bytes")
    return path


def tls_material(cluster: Cluster) -> dict:
    """The kubeconfig's trust and client credentials, in order of precedence, as
    ``_fastpath.HttpsGet`` takes them (and ``_configure`` gives them to ``_ssl``): ``insecure``;
    unless insecure, ``ca_pem`` (certificate-authority-data) or else ``ca_file`` (neither: the
    system's store); ``cert_file``/``key_file`` (client certificate data goes through a memfd).
    Files must be regular files (``regular_file``)."""
    from ._fastpath import b64decode  # not binascii: see b64decode

    material: dict = {"insecure": cluster.insecure}
    if cluster.insecure:
        pass
    elif cluster.ca_data:
        material["ca_pem"] = b64decode(cluster.ca_data)
    elif cluster.ca_file:
        material["ca_file"] = regular_file(cluster.ca_file, "certificate-authority")
    cert: str = cluster.client_cert_file and regular_file(cluster.client_cert_file, "client-certificate")
    key: str | None = cluster.client_key_file and regular_file(cluster.client_key_file, "client-key")
    if cluster.client_cert_data:
        cert = _memfile(cluster.client_cert_data)
        key = _memfile(cluster.client_key_data) if cluster.client_key_data else None
    if cert:
        material["cert_file"] = cert
        material["key_file"] = key or None
    return material


def ssl_context(cluster: Cluster) -> ssl.SSLContext:
    """The same TLS settings as a full ``ssl.SSLContext``, for long-lived processes (the node
    agent) that use the ``ssl``/``socket`` modules and can afford their import."""
    import ssl

    return _configure(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cluster)


def _ascii_idna() -> None:
    """Serve the ``idna`` codec for ASCII host names without importing ``encodings.idna``.

    ``_ssl`` encodes ``server_hostname`` with the ``idna`` codec, and the real codec pulls
    in ``re``, ``stringprep`` and ``unicodedata`` (~15 ms per exec). API server hosts are IPs
    or ASCII DNS names, whose IDNA form is the name itself; a non-ASCII name gets a clear
    error naming the fix. Installed only in the one-shot plugin process, before the codec
    is first looked up (the codec registry then caches it).
    """
    import sys

    from . import ONE_SHOT_PROCESS  # the package's flag, set by the plugin's entry point

    if not ONE_SHOT_PROCESS or "encodings.idna" in sys.modules:
        return
    import codecs

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        if not text.isascii():
            raise UnicodeError(
                f"non-ASCII API server host {text!r}: use its IP or punycode (xn--) form in the kubeconfig"
            )
        return text.encode("ascii"), len(text)

    def decode(data: Buffer, errors: str = "strict") -> tuple[str, int]:
        raw = bytes(data)
        return raw.decode("ascii", errors), len(raw)

    class _IdnaStub:
        @staticmethod
        def getregentry() -> codecs.CodecInfo:
            return codecs.CodecInfo(encode, decode, name="idna")

    # A class stands in for the module: the codec search function only calls getregentry().
    sys.modules["encodings.idna"] = _IdnaStub  # type: ignore[assignment]  # not a ModuleType, see above


def _without_waiting(raw: _socket.socket, attempt: Callable[[], bool]) -> bool:
    """``attempt()`` with ``raw`` non-blocking, its timeout restored afterwards."""
    prev = raw.gettimeout()
    raw.settimeout(0.0)
    try:
        return attempt()
    finally:
        raw.settimeout(prev)


def raw_ready(raw: _socket.socket) -> bool:
    """Has the peer sent bytes not read yet (or closed, or failed)? Never waits."""
    import _socket

    def peek() -> bool:
        try:
            raw.recv(1, _socket.MSG_PEEK)
            return True  # data, or b"" at EOF
        except BlockingIOError:
            return False
        except OSError:
            return True  # the next real read reports it

    return _without_waiting(raw, peek)


class TLSConn:
    """``recv``/``sendall``/``settimeout``/``close`` over an ``_ssl`` socket object (what
    ``read_response`` needs). The handshake is bounded by ``deadline`` (monotonic).

    ``idle``, when given, is handed ``ready`` while the server works on our ClientHello: the
    handshake starts without waiting, ``idle`` runs until the answer is there (it polls
    ``ready``), then the handshake completes as usual. ``ready`` also serves while the server
    works on a request: it reads ahead without waiting and keeps what it got for ``recv``."""

    __slots__ = ("raw", "tls", "_ahead")

    def __init__(
        self,
        ctx: _ssl._SSLContext,
        raw: _socket.socket,
        host: str,
        deadline: float | None = None,
        idle: Callable[[Callable[[], bool]], object] | None = None,
    ) -> None:
        import _ssl

        _ascii_idna()
        self.raw = raw
        self._ahead: bytes | BaseException | None = None
        self.tls = ctx._wrap_socket(raw, False, host)  # type: ignore[attr-defined]  # C method, not in typeshed

        def hello() -> bool:  # sends the ClientHello; False: the answer is not there yet
            try:
                self.tls.do_handshake()
                return True
            except (_ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                return False

        if idle is not None and not _without_waiting(raw, hello):
            idle(lambda: raw_ready(raw))
        if deadline is not None:
            raw.settimeout(time_left(deadline))  # _ssl reads the socket's timeout per call
        self.tls.do_handshake()

    def ready(self) -> bool:
        """Is there an answer (data, EOF or an error) to read? Reads ahead, never waits."""
        import _ssl

        if self._ahead is not None:
            return True

        def read_ahead() -> bool:
            try:
                self._ahead = self.tls.read(65536)  # TLS 1.3 session tickets are consumed here too
            except (_ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                return False
            except (_ssl.SSLEOFError, _ssl.SSLZeroReturnError):
                self._ahead = b""
            except OSError as e:  # _ssl.SSLError included: recv raises it where it belongs
                self._ahead = e
            return True

        return _without_waiting(self.raw, read_ahead)

    def settimeout(self, seconds: float) -> None:
        self.raw.settimeout(seconds)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.tls.write(view) :]

    def recv(self, n: int) -> bytes:
        import _ssl

        ahead = self._ahead
        if ahead is not None:  # what ready() read: bytes (b"" at EOF) or the error to raise
            self._ahead = None
            if isinstance(ahead, BaseException):
                raise ahead
            if len(ahead) > n:
                self._ahead = ahead[n:]
            return ahead[:n]
        try:
            return self.tls.read(n)
        except _ssl.SSLEOFError:  # peer closed without close_notify: treat as EOF, as ssl.py does
            return b""
        except _ssl.SSLZeroReturnError:
            return b""

    def close(self) -> None:
        self.raw.close()


_Socket: type[_socket.socket] | None = None


def _socket_class() -> type[_socket.socket]:
    """A subclass of ``_socket.socket``: ``_ssl`` keeps a weak reference to the socket it
    wraps and the C type alone does not support weak references."""
    global _Socket
    if _Socket is None:
        import _socket

        class _WeakrefSocket(_socket.socket):
            __slots__ = ("__weakref__",)

        _Socket = _WeakrefSocket
    return _Socket


def resolve(host: str, port: int, deadline: float) -> list:
    """``getaddrinfo`` for TCP, bounded by ``deadline``.

    An IP literal (how the installer names the API server) is parsed without the resolver.
    A name is resolved on a helper thread (``_thread``: built in, no import cost) so that a
    slow DNS server ends the attempt at its deadline, not at the resolver's own timeouts
    (5 s per server and try by default); the helper finishes or dies with the process."""
    import _socket

    # bytes, not str: a str host is IDNA-encoded first, which imports encodings.idna.
    name = host.encode("ascii") if host.isascii() else host
    try:
        return _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM, 0, _socket.AI_NUMERICHOST)
    except _socket.gaierror:
        pass
    import _thread

    done = _thread.allocate_lock()
    done.acquire()
    box: list = []

    def lookup() -> None:
        try:
            box.append(_socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM))
        except BaseException as e:  # handed to the caller, never raised on this thread
            box.append(e)
        finally:
            done.release()

    _thread.start_new_thread(lookup, ())
    if not done.acquire(True, time_left(deadline)):
        raise TimeoutError(f"resolving {host[:80]} took longer than the attempt's deadline")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def connect(host: str, port: int, deadline: float) -> _socket.socket:
    """TCP connect with ``_socket`` (``import socket`` alone costs ~15 ms per exec): name
    resolution and each address tried are bounded by what is left until ``deadline``."""
    sock_cls = _socket_class()
    last: OSError | None = None
    for family, kind, proto, _, addr in resolve(host, port, deadline):
        sock = sock_cls(family, kind, proto)
        try:
            sock.settimeout(time_left(deadline))
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            last = e
            if isinstance(e, TimeoutError):
                break
    raise last or OSError(f"no address for {host}")


def _memfile(b64: str) -> str:
    """Client cert/key data -> a path ssl can load, without touching the disk (memfd)."""
    import posix  # not os: see istio_cni.environ

    from ._fastpath import b64decode

    fd = posix.memfd_create("kubecred", posix.MFD_CLOEXEC)
    posix.write(fd, b64decode(b64))
    return f"/proc/self/fd/{fd}"
