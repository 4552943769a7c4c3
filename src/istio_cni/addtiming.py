"""How long this plugin process took for its ADD, reported to the node agent's metrics.

The node program exports ``istio_cni_add_duration_seconds`` (by path and result) and
``istio_cni_agent_fallbacks_total`` from what each plugin process tells it here:

- agent path: the request carries ``elapsed`` (seconds since exec); the agent adds its own
  handling time and observes it when it answers. No extra exchange.
- direct path: one JSON line ``{"report": "add", ...}`` after the result is on stdout. When
  the agent relay already sends this process's log lines at exit (``agent_client``), the line
  rides along; otherwise it is appended to ``SPOOL_NAME`` in the agent's run dir, which the
  agent drains when it starts and every few seconds. Nothing here waits for anyone: a failed
  write is dropped.

Start time: ``mark_start()`` runs at the plugin's first line of Python. The time before it
(the runtime's fork, the launcher, interpreter start, the first imports) is read from
``/proc/self/schedstat``: nanoseconds this task ran plus waited runnable since fork, which
counts across exec. Only time asleep before our first line (cold disk reads) escapes it.
"""

from __future__ import annotations

import time

REPORT = "add"
SPOOL_NAME = "add-reports.jsonl"
SPOOL_MAX_BYTES = 1 << 20  # a node whose agent is down for long keeps at most ~10k reports
PATHS = ("agent", "direct")
RESULTS = ("ok", "error")
# Why an ADD that wanted the agent went direct (the fallbacks counter's reason label).
FALLBACK_ABSENT = "absent"  # socket missing: agent not running (yet)
FALLBACK_UNREACHABLE = "unreachable"  # refused, timed out, reset, garbled answer
FALLBACK_DECLINED = "declined"  # the agent answered {"fallback"}: cannot see the pod (yet)
FALLBACK_REASONS = (FALLBACK_ABSENT, FALLBACK_UNREACHABLE, FALLBACK_DECLINED)

_t0 = 0.0
_before = 0.0
# Set by the ADD as it goes: the agent's socket (where to report) and how the ADD ended up.
agent_socket = ""
answered_by_agent = False
fallback = ""


def _runnable_seconds() -> float:
    try:
        with open("/proc/self/schedstat", "rb") as f:
            run_ns, wait_ns = f.read(128).split()[:2]
        return (int(run_ns) + int(wait_ns)) / 1e9
    except (OSError, ValueError):  # no schedstats in this kernel: count from our first line
        return 0.0


def mark_start() -> None:
    global _t0, _before
    _t0 = time.monotonic()
    _before = _runnable_seconds()


def elapsed() -> float:
    """Seconds since exec (0.0 before ``mark_start``: e.g. the plugin run in-process by tests)."""
    if not _t0:
        return 0.0
    return _before + time.monotonic() - _t0


def report_line(result: str) -> str:
    from ._fastpath import json_dumps

    return (
        json_dumps(
            {"report": REPORT, "path": "direct", "result": result, "seconds": round(elapsed(), 6), "fallback": fallback}
        )
        + "\n"
    )


def finish(exit_code: int) -> None:
    """After a direct-path ADD's result is written: hand its report on, never waiting."""
    if not agent_socket or answered_by_agent or not _t0:
        return
    import sys

    line = report_line("ok" if exit_code == 0 else "error")
    client = sys.modules.get(__package__ + ".agent_client")  # not loaded: no relay to ride on
    if client is not None and client.relay_line(line):
        return
    _spool(line)


def _spool(line: str) -> None:
    """Append ``line`` to the spool beside the agent's socket (a missing run dir: dropped).

    Through ``posix``, not ``os`` (kept off the ADD path: ``istio_cni.environ``)."""
    import posix

    run_dir = agent_socket.rpartition("/")[0]
    if not run_dir:
        return
    try:
        fd = posix.open(
            f"{run_dir}/{SPOOL_NAME}",
            posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC | posix.O_NOFOLLOW,
            0o600,
        )
    except (OSError, ValueError):  # no such dir (agent never ran here), not a dir, a NUL
        return
    try:
        if posix.fstat(fd).st_size < SPOOL_MAX_BYTES:
            posix.write(fd, line.encode())  # one short O_APPEND write: lines never interleave
    except OSError:
        pass
    finally:
        posix.close(fd)
