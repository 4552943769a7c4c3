"""Reading one HTTP/1.1 response, strictly, within one deadline and size caps.

Shared by the pod lookup (``k8s`` over ``transport``) and the node-agent client. Stdlib
``http.client`` is too costly to import per exec and too lenient for a root process; this
reader accepts a subset of what a strict reference (h11, the fuzz tests' oracle) accepts and
returns the same (status, body) for it: CRLF line ends only, header names are tokens,
values carry no control bytes, one Content-Length of plain digits checked against the cap
before anything is allocated, Transfer-Encoding only ``chunked``, only in HTTP/1.1, never
with Content-Length; chunk sizes in hex, CRLF after each chunk's data; no 1xx. Anything
else is a ``ResponseError``; a deadline that passes is ``TimeoutError``.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import Protocol

    class Receiver(Protocol):
        """What the reader needs of a connection: a socket or ``transport.TLSConn``."""

        def settimeout(self, seconds: float) -> None: ...
        def recv(self, n: int) -> bytes: ...


# Bounds of one answer (the agent client passes its own, smaller body cap). The head of a
# kube-apiserver answer is a few hundred bytes (Content-Type, Date, Audit-Id,
# X-Kubernetes-Pf-*); 64 KiB leaves room for proxies in between. The body: kube-apiserver
# refuses request bodies over 3 MiB and etcd objects over 1.5 MiB (--max-request-bytes),
# so no pod the API can hold renders anywhere near 4 MiB of JSON; a bigger answer is not
# a pod, and reading it would only cost a root process memory.
MAX_HEAD = 64 << 10
MAX_BODY = 4 << 20
MAX_CHUNK_LINE = 4 << 10  # hex size + chunk extensions; real servers send "1f40\r\n"
_RECV = 65536


class Received:
    """A whole answer already received (``_fastpath.HttpsGet``'s bytes) as a ``Receiver``:
    the same strict reading applies to it as to a live connection."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def settimeout(self, seconds: float) -> None:
        pass  # nothing left to wait for

    def recv(self, n: int) -> bytes:
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += len(chunk)
        return chunk


class ResponseError(ValueError):
    """The answer is not a well-framed HTTP/1.1 response within our bounds (malformed,
    truncated, ambiguous or oversized). The message says which; it never quotes more than
    a short prefix of what the server sent."""


def time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (monotonic), or ``TimeoutError`` if it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline of the HTTP exchange passed")
    return left


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Field values and reason phrases: visible ASCII, obs-text, SP and HTAB (RFC 9110 5.5);
# every other control byte (CR, LF, NUL, ...) is refused.
_TEXT = frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x20, 0x09}
_HEX = frozenset(b"0123456789abcdefABCDEF")


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
    end in CRLF only, names are tokens, values carry no control bytes, Content-Length,
    Transfer-Encoding and Host appear at most once (other repeated fields are joined with
    ", "). Shared with the agent client."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    version, sp, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if (
        not sp
        or version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or not _TEXT.issuperset(reason)
        or b"\n" in status_line
    ):
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

    def __init__(self, sock: Receiver, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Receive more; False at EOF."""
        if self.eof:
            return False
        self.sock.settimeout(time_left(self.deadline))
        data = self.sock.recv(_RECV)
        if not data:
            self.eof = True
            return False
        if self.pos > _RECV and self.pos * 2 > len(self.buf):
            del self.buf[: self.pos]
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
                line = bytes(self.buf[self.pos : i])
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
            out += memoryview(self.buf)[self.pos : self.pos + piece]
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
            out += memoryview(self.buf)[self.pos :]
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
        if not size_hex or len(size_hex) > 16 or not _HEX.issuperset(size_hex) or (semi and not _TEXT.issuperset(ext)):
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


def read_response(sock: Receiver, deadline: float | None = None, max_body: int = MAX_BODY) -> tuple[int, str, bytes]:
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
