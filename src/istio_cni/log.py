"""JSON-lines logging to stderr (and optionally a sink such as the node agent).

stdout is the CNI protocol, so nothing here ever writes to it. The stdlib ``logging``
package costs several milliseconds to import on every pod ADD; this logger is a few
lines, writes one JSON object per line, and binds pod/container context once.
Tokens and other secrets must never be passed in ``fields``.
"""

from __future__ import annotations

import sys
import time

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "none": 100}


def _esc(s: str) -> str:
    # Minimal JSON string escaping without importing json on the logging path.
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in out):
        out = "".join(c if ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in out)
    return '"' + out + '"'


def _val(v: object) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_val(x) for x in v) + "]"
    return _esc(str(v))


class Logger:
    """``log.info("msg", key=value)`` -> ``{"time":..., "level":"info", "msg":"msg", ...}``."""

    __slots__ = ("level", "context", "stream", "sinks")

    def __init__(self, level: str = "info", stream=None) -> None:
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
        parts = [f'"time":"{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))}.{int(t % 1 * 1e6):06d}Z"',
                 f'"level":"{name}"', f'"msg":{_esc(msg)}']
        for k, v in self.context.items():
            parts.append(f"{_esc(k)}:{_val(v)}")
        for k, v in fields.items():
            parts.append(f"{_esc(k)}:{_val(v)}")
        line = "{" + ",".join(parts) + "}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
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
