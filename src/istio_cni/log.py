"""JSON-lines logging to stderr (and optionally a sink such as the node agent).

stdout is the CNI protocol, so nothing here ever writes to it. The stdlib ``logging``
package costs several milliseconds to import on every pod ADD; this logger is a few
lines, writes one JSON object per line, and binds pod/container context once.
Tokens and other secrets must never be passed in ``fields``; as a second line of defence,
every string is run through ``errors.redact`` (secrets registered where they are read).
"""

from __future__ import annotations

import sys
import time

# The stdlib's C string quoting (what json.dumps uses), without the ``json`` package: every
# line is pure ASCII JSON whatever a value holds (control characters, non-UTF-8 bytes that
# reached us as surrogate escapes, lone surrogates).
from _json import encode_basestring_ascii as _quote

from .errors import redact

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the ADD path's budget)
if TYPE_CHECKING:
    from typing import TextIO

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "none": 100}


def _esc(s: str) -> str:
    return _quote(redact(s if type(s) is str else str(s)))


def _val(v: object) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        return float.__repr__(v) if v - v == 0.0 else _esc(repr(v))  # nan/inf are not JSON
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_val(x) for x in v) + "]"
    try:
        text = str(v)
    except Exception:  # a broken __str__ must not cost the line
        text = f"<unprintable {type(v).__name__}>"
    return _esc(text)


class Logger:
    """``log.info("msg", key=value)`` -> ``{"time":..., "level":"info", "msg":"msg", ...}``."""

    __slots__ = ("level", "context", "stream", "sinks")

    def __init__(self, level: str = "info", stream: TextIO | None = None) -> None:
        self.level = LEVELS.get(level.lower(), 20) if isinstance(level, str) else 20
        self.context: dict = {}
        self.stream = stream if stream is not None else sys.stderr
        self.sinks: list = []  # callables taking the rendered line (agent forwarding)

    def set_level(self, level: str) -> None:
        lv = LEVELS.get(str(level).lower())
        if lv is not None:
            self.level = lv

    def bind(self, **fields: object) -> None:
        self.context.update(fields)

    def _emit(self, lvl: int, name: str, msg: str, fields: dict) -> None:
        if lvl < self.level:
            return
        t = time.time()
        parts = [
            f'"time":"{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))}.{int(t % 1 * 1e6):06d}Z"',
            f'"level":"{name}"',
            f'"msg":{_esc(msg)}',
        ]
        for k, v in self.context.items():
            parts.append(f"{_esc(k)}:{_val(v)}")
        for k, v in fields.items():
            parts.append(f"{_esc(k)}:{_val(v)}")
        line = "{" + ",".join(parts) + "}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except Exception:  # stderr closed or gone: logging must never fail the command
            pass
        for sink in self.sinks:
            try:
                sink(line)
            except Exception:  # a broken sink must never fail the ADD
                pass

    def debug(self, msg: str, **f: object) -> None:
        self._emit(10, "debug", msg, f)

    def info(self, msg: str, **f: object) -> None:
        self._emit(20, "info", msg, f)

    def warning(self, msg: str, **f: object) -> None:
        self._emit(30, "warn", msg, f)

    def error(self, msg: str, **f: object) -> None:
        self._emit(40, "error", msg, f)


log = Logger()
