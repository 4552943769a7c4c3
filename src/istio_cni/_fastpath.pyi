"""Type stub for the compiled ``istio_cni._fastpath`` (built from ``_fastpath.pyx``).

Three jobs: network-namespace entry/exit, ``CNI_ARGS`` splitting, and JSON on the standard
library's C engine. The netns exception types are ``istio_cni.errors``' (re-exported here).
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
