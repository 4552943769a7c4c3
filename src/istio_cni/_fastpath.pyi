"""Type stub for the compiled ``istio_cni._fastpath`` (built from ``_fastpath.pyx``).

Four jobs: network-namespace entry/exit, ``CNI_ARGS`` splitting, JSON on the standard
library's C engine, and OpenSSL on C threads (its set-up, the pod GET). The netns exception
types are ``istio_cni.errors``' (re-exported here).
"""

from types import TracebackType
from typing import Literal

from typing_extensions import Self, disjoint_base

from .errors import NetnsRestoreFailed as NetnsRestoreFailed, NotANetns as NotANetns

def open_netns(path: str) -> int: ...
def close_fd(fd: int) -> None: ...
def current_netns() -> int: ...
def enter_fd(fd: int) -> None: ...
def netns_id(fd: int) -> tuple[int, int]: ...

@disjoint_base  # a C type: cannot be a base next to another C type
class Entered:
    @property
    def path(self) -> str: ...
    def __new__(cls, path: str) -> Self: ...  # Cython __cinit__
    def __enter__(self) -> Entered: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...  # never swallows: a failed restore raises NetnsRestoreFailed

def parse_cni_args(raw: str) -> list[tuple[str, str]]: ...

MAX_DEPTH: int  # the deepest JSON nesting json_loads accepts

def json_loads(data: bytes | bytearray | memoryview | str) -> object: ...
def json_dumps(obj: object) -> str: ...
def json_quote(s: str) -> str: ...
def b64decode(s: str) -> bytes: ...
def openssl_warm_start() -> bool: ...
def openssl_warm_wait() -> None: ...
def is_ip_literal(host: str) -> bool: ...

@disjoint_base  # a C type
class HttpsGet:
    """One HTTPS exchange on a C thread (``_tlsget.h``); see ``_fastpath.pyx``."""

    def __new__(  # Cython __cinit__
        cls,
        host: str,
        port: int,
        request: bytes,
        deadline: float,
        cap: int,
        *,
        insecure: bool = False,
        ca_pem: bytes | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        session_file: str | None = None,
    ) -> Self: ...
    def done(self) -> bool: ...
    def resumed(self) -> bool: ...
    def result(self) -> bytes: ...

def tls_client_profile() -> tuple[int, int, int, int, list[str]] | None: ...
