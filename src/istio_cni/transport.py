"""HTTP/1.1 GETs over TCP/TLS for a one-shot process, on the C modules ``_socket``/``_ssl``.

Why not ``http.client`` / ``ssl`` / ``socket``: in the plugin every import is paid per pod
ADD. ``http.client`` pulls in ``email``; ``ssl`` and ``socket`` build enums from every
constant (25-40 ms together here); a ``str`` host name goes through the ``idna`` codec,
which imports ``re``, ``stringprep`` and ``unicodedata``. The C modules underneath are the
same engines: OpenSSL does certificate, hostname and IP-SAN verification exactly as with
``ssl.SSLContext(PROTOCOL_TLS_CLIENT)``. Long-lived processes (the node agent) use
``ssl_context`` with the regular modules instead.
"""

from __future__ import annotations


import time

# Bounds of one API answer. The head of a kube-apiserver answer is a few hundred bytes
# (Content-Type, Date, Audit-Id, X-Kubernetes-Pf-*); 64 KiB leaves room for proxies in
# between. The body: kube-apiserver refuses request bodies over 3 MiB and etcd objects
# over 1.5 MiB (--max-request-bytes), so no pod the API can hold renders anywhere near
# 4 MiB of JSON; a bigger answer is not a pod, and reading it would only cost a root
# process memory.
MAX_HEAD = 64 << 10
MAX_BODY = 4 << 20
MAX_CHUNK_LINE = 4 << 10  # hex size + chunk extensions; real servers send "1f40\r\n"
_RECV = 65536


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"HTTP {status} {reason}")


class ResponseError(ValueError):
    """The answer is not a well-framed HTTP/1.1 response within our bounds (malformed,
    truncated, ambiguous or oversized). The message says which; it never quotes more than
    a short prefix of what the server sent."""


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


def _configure(ctx, cluster):
    """Trust and client credentials from the kubeconfig. Works on ``_ssl._SSLContext`` and
    on its subclass ``ssl.SSLContext`` alike."""
    import _ssl

    if cluster.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    elif cluster.ca_data:
        import binascii

        ctx.load_verify_locations(None, None, binascii.a2b_base64(cluster.ca_data).decode())
    elif cluster.ca_file:
        ctx.load_verify_locations(cluster.ca_file)
    else:
        ctx.set_default_verify_paths()
    cert, key = cluster.client_cert_file, cluster.client_key_file
    if cluster.client_cert_data:
        cert = _memfile(cluster.client_cert_data)
        key = _memfile(cluster.client_key_data) if cluster.client_key_data else None
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def lean_tls_context(cluster):
    """An OpenSSL context from the C module ``_ssl`` directly.

    ``import ssl`` costs 25-40 ms here (it builds enums from every OpenSSL constant) on
    every pod ADD; ``_ssl`` is the same engine without that. The context is what
    ``ssl.SSLContext(PROTOCOL_TLS_CLIENT)`` gives: TLS >= 1.2, certificate and hostname
    (or IP SAN) verification in OpenSSL, unless the kubeconfig says insecure-skip-tls-verify.
    """
    import _ssl

    return _configure(_ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT), cluster)


def ssl_context(cluster):
    """The same TLS settings as a full ``ssl.SSLContext``, for long-lived processes (the node
    agent) that use the ``ssl``/``socket`` modules and can afford their import."""
    import ssl

    return _configure(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cluster)


# Set by the plugin's entry point: this process is a one-shot plugin exec, so the lean
# IDNA shortcut below may be installed process-wide. Long-lived processes leave it off.
ONE_SHOT_PROCESS = False


def _ascii_idna() -> None:
    """Serve the ``idna`` codec for ASCII host names without importing ``encodings.idna``.

    ``_ssl`` encodes ``server_hostname`` with the ``idna`` codec, and the real codec pulls
    in ``re``, ``stringprep`` and ``unicodedata`` (~15 ms per exec). API server hosts are IPs
    or ASCII DNS names, whose IDNA form is the name itself; a non-ASCII name gets a clear
    error naming the fix. Installed only in the one-shot plugin process, before the codec
    is first looked up (the codec registry then caches it).
    """
    import sys

    if not ONE_SHOT_PROCESS or "encodings.idna" in sys.modules:
        return
    import codecs

    def encode(text, errors="strict"):
        if not text.isascii():
            raise UnicodeError(
                f"non-ASCII API server host {text!r}: use its IP or punycode (xn--) form in the kubeconfig"
            )
        return text.encode("ascii"), len(text)

    def decode(data, errors="strict"):
        return bytes(data).decode("ascii", errors), len(data)

    class _IdnaStub:
        @staticmethod
        def getregentry():
            return codecs.CodecInfo(encode, decode, name="idna")

    sys.modules["encodings.idna"] = _IdnaStub


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline of the API request passed")
    return left


class TLSConn:
    """``recv``/``sendall``/``settimeout``/``close`` over an ``_ssl`` socket object (what
    ``read_response`` needs). The handshake is bounded by ``deadline`` (monotonic)."""

    __slots__ = ("raw", "tls")

    def __init__(self, ctx, raw, host: str, deadline: float | None = None) -> None:
        _ascii_idna()
        self.raw = raw
        self.tls = ctx._wrap_socket(raw, False, host)
        if deadline is not None:
            raw.settimeout(_left(deadline))  # _ssl reads the socket's timeout per call
        self.tls.do_handshake()

    def settimeout(self, seconds: float) -> None:
        self.raw.settimeout(seconds)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.tls.write(view):]

    def recv(self, n: int) -> bytes:
        import _ssl

        try:
            return self.tls.read(n)
        except _ssl.SSLEOFError:  # peer closed without close_notify: treat as EOF, as ssl.py does
            return b""
        except _ssl.SSLZeroReturnError:
            return b""

    def close(self) -> None:
        self.raw.close()


_Socket = None


def _socket_class():
    """A subclass of ``_socket.socket``: ``_ssl`` keeps a weak reference to the socket it
    wraps and the C type alone does not support weak references."""
    global _Socket
    if _Socket is None:
        import _socket

        class _Socket(_socket.socket):
            __slots__ = ("__weakref__",)

    return _Socket


def connect(host: str, port: int, deadline: float):
    """TCP connect with ``_socket`` (``import socket`` alone costs ~15 ms per exec), each
    address tried with what is left until ``deadline`` (monotonic). Name resolution is the
    system resolver's (its own timeouts); API servers are normally named by IP."""
    import _socket

    sock_cls = _socket_class()
    last: OSError | None = None
    # bytes, not str: a str host is IDNA-encoded first, which imports encodings.idna.
    name = host.encode("ascii") if host.isascii() else host
    for family, kind, proto, _, addr in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = sock_cls(family, kind, proto)
        try:
            sock.settimeout(_left(deadline))
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
    import binascii
    import os

    fd = os.memfd_create("kubecred", os.MFD_CLOEXEC)
    os.write(fd, binascii.a2b_base64(b64))
    return f"/proc/self/fd/{fd}"


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Field values and reason phrases: visible ASCII, obs-text, SP and HTAB (RFC 9110 5.5);
# every other control byte (CR, LF, NUL, ...) is refused.
_TEXT = frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x20, 0x09}


def _field(line: bytes) -> tuple[str, str]:
    """``name: value`` -> (lower-case name, value without surrounding SP/HTAB)."""
    name, colon, value = line.partition(b":")
    if not colon or not name or not _TOKEN.issuperset(name):
        raise ResponseError(f"malformed header line {line[:40]!r}")
    # Obsolete line folding (a line starting with SP/HTAB) fails the token test above.
    if not _TEXT.issuperset(value):
        raise ResponseError(f"control character in header {name[:40]!r}")
    return name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")


def parse_head(head: bytes) -> tuple[int, str, dict]:
    """An HTTP/1.x response head (status line + headers, no blank line) -> (status, reason,
    lower-cased headers). ``ResponseError`` (a ``ValueError``) names what is malformed: lines
    end in CRLF only, names are tokens, values carry no control bytes, a header appears once
    (except Set-Cookie/Warning style lists, which we merge). Shared with the agent client."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    version, sp, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if (not sp or version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3
            or not code.isdigit() or not _TEXT.issuperset(reason) or b"\n" in status_line):
        raise ResponseError(f"malformed status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line:
            raise ResponseError("bare CR or LF in the response head")
        name, value = _field(line)
        if name in headers:
            if name in ("content-length", "transfer-encoding", "host"):
                raise ResponseError(f"duplicate {name} header")
            headers[name] += ", " + value
        else:
            headers[name] = value
    return int(code), reason.decode("latin-1"), headers


class _Stream:
    """A receive buffer over ``sock`` whose every ``recv`` is bounded by ``deadline``.

    Bytes are consumed by advancing ``pos``; the consumed prefix is dropped only once it is
    more than half of the buffer, so reading N bytes costs O(N) in total."""

    __slots__ = ("sock", "deadline", "buf", "pos", "eof")

    def __init__(self, sock, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Receive more; False at EOF."""
        if self.eof:
            return False
        self.sock.settimeout(_left(self.deadline))
        data = self.sock.recv(_RECV)
        if not data:
            self.eof = True
            return False
        if self.pos > _RECV and self.pos * 2 > len(self.buf):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data
        return True

    def until(self, sep: bytes, limit: int, what: str) -> bytes:
        """Bytes up to ``sep`` (consumed with it, not returned); at most ``limit`` before it."""
        scan = 0  # offset from pos already searched: each byte is scanned about once
        while True:
            i = self.buf.find(sep, self.pos + scan)
            if i >= 0:
                if i - self.pos > limit:
                    break
                line = bytes(self.buf[self.pos:i])
                self.pos = i + len(sep)
                return line
            if len(self.buf) - self.pos > limit + len(sep):
                break
            scan = max(0, len(self.buf) - self.pos - len(sep) + 1)
            if not self.fill():  # may compact the buffer; offsets from pos stay valid
                raise ResponseError(f"connection closed in the {what}")
        raise ResponseError(f"{what} longer than {limit} bytes")

    def take(self, n: int, out: bytearray, what: str) -> None:
        """Append exactly ``n`` bytes to ``out``."""
        while n:
            if self.pos == len(self.buf) and not self.fill():
                raise ResponseError(f"connection closed in the {what}")
            piece = min(n, len(self.buf) - self.pos)
            out += memoryview(self.buf)[self.pos:self.pos + piece]
            self.pos += piece
            n -= piece

    def expect(self, literal: bytes, what: str) -> None:
        got = bytearray()
        self.take(len(literal), got, what)
        if got != literal:
            raise ResponseError(f"{what}: expected {literal!r}, got {bytes(got)!r}")

    def rest(self, out: bytearray, limit: int) -> None:
        """Everything until EOF (a body without framing headers, HTTP/1.0 style)."""
        while True:
            out += memoryview(self.buf)[self.pos:]
            self.pos = len(self.buf)
            if len(out) > limit:
                raise ResponseError(f"response body larger than {limit} bytes")
            if not self.fill():
                return


def _content_length(value: str, limit: int) -> int:
    if not value.isdigit() or not value.isascii():
        raise ResponseError(f"invalid Content-Length {value[:24]!r}")
    if len(value.lstrip("0")) > len(str(limit)) or int(value) > limit:
        raise ResponseError(f"response body of {value[:24]} bytes is larger than {limit}")
    return int(value)


def _read_chunked(stream: _Stream, out: bytearray, limit: int) -> None:
    while True:
        line = stream.until(b"\r\n", MAX_CHUNK_LINE, "chunk size line")
        size_hex, semi, ext = line.partition(b";")
        if (not size_hex or len(size_hex) > 16 or not _HEX.issuperset(size_hex)
                or (semi and not _TEXT.issuperset(ext))):
            raise ResponseError(f"malformed chunk size line {line[:40]!r}")
        size = int(size_hex, 16)
        if size == 0:
            break
        if len(out) + size > limit:
            raise ResponseError(f"response body larger than {limit} bytes")
        stream.take(size, out, "chunk data")
        stream.expect(b"\r\n", "end of chunk")
    # Trailer fields (rarely sent; parsed as strictly as headers, then dropped) and the
    # final empty line.
    budget = MAX_HEAD
    while True:
        line = stream.until(b"\r\n", budget, "chunked trailer")
        if not line:
            return
        _field(line)
        budget -= len(line) + 2


_HEX = frozenset(b"0123456789abcdefABCDEF")


def read_response(sock, deadline: float | None = None, max_body: int = MAX_BODY) -> tuple[int, str, bytes]:
    """Read one HTTP/1.1 response from ``sock`` (``recv``/``settimeout``) -> (status, reason, body).

    Everything is read by ``deadline`` (monotonic; default 30 s from now) or ``TimeoutError``.
    Framing is strict, and every refusal is a ``ResponseError``: CRLF line ends, one
    Content-Length of digits, Transfer-Encoding only ``chunked`` and only in HTTP/1.1 and
    never together with Content-Length, chunk sizes in hex followed by CRLF after the data,
    no 1xx; the head is capped at ``MAX_HEAD`` and the body at ``max_body``."""
    if deadline is None:
        deadline = time.monotonic() + 30.0
    stream = _Stream(sock, deadline)
    head = stream.until(b"\r\n\r\n", MAX_HEAD, "response head")
    status, reason, headers = parse_head(head)
    if not 200 <= status <= 599:
        raise ResponseError(f"unexpected HTTP status {status}")
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    body = bytearray()
    if te is not None:
        if te.lower() != "chunked":
            raise ResponseError(f"unsupported Transfer-Encoding {te[:24]!r}")
        if cl is not None:
            raise ResponseError("ambiguous framing: both Transfer-Encoding and Content-Length")
        if head.startswith(b"HTTP/1.0"):
            raise ResponseError("ambiguous framing: Transfer-Encoding in an HTTP/1.0 response")
    if status in (204, 304):
        if cl is not None:
            _content_length(cl, max_body)
    elif te is not None:
        _read_chunked(stream, body, max_body)
    elif cl is not None:
        stream.take(_content_length(cl, max_body), body, "response body")
    else:
        stream.rest(body, max_body)
    return status, reason, bytes(body)
