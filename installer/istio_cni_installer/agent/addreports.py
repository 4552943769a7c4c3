"""ADD timings from the plugin processes -> the node program's metrics.

What the plugin sends is described in ``istio_cni.addtiming`` (the one place that defines
the report's shape and label values). Here each report is checked field by field - a line
that is not exactly a report is dropped, so no plugin line can invent a label value - and
observed in ``istio_cni_add_duration_seconds`` / counted in ``istio_cni_agent_fallbacks_total``.

Reports of ADDs that ran while the agent was away sit in the spool file in the run dir;
``drain_spool`` takes the file over by rename (plugins appending later start a new one),
reads a bounded amount and removes it.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import TYPE_CHECKING, TypeGuard

from istio_cni import addtiming
from istio_cni.log import log

if TYPE_CHECKING:
    from ..health import Metrics

DURATION = "istio_cni_add_duration_seconds"
FALLBACKS = "istio_cni_agent_fallbacks_total"
MAX_SECONDS = 3600.0  # no ADD lasts an hour: a bigger value is not a timing
DRAIN_INTERVAL_SECONDS = 5.0


def observe_agent_add(metrics: Metrics | None, plugin_elapsed: object, agent_seconds: float, result: str) -> None:
    """An ADD the agent answered: the plugin's time before its request plus ours."""
    if metrics is None:
        return
    before = plugin_elapsed if _is_seconds(plugin_elapsed) else 0.0
    metrics.observe(DURATION, before + agent_seconds, path="agent", result=result)


def observe_report(metrics: Metrics | None, doc: object) -> bool:
    """One decoded report line; False (nothing recorded) unless it is exactly a report."""
    if metrics is None or not isinstance(doc, dict) or doc.get("report") != addtiming.REPORT:
        return False
    path, result, seconds = doc.get("path"), doc.get("result"), doc.get("seconds")
    reason = doc.get("fallback", "")
    if (
        path not in addtiming.PATHS
        or result not in addtiming.RESULTS
        or not _is_seconds(seconds)
        or not (reason == "" or reason in addtiming.FALLBACK_REASONS)
    ):
        return False
    metrics.observe(DURATION, float(seconds), path=path, result=result)
    if reason:
        metrics.inc(FALLBACKS, reason=reason)
    return True


def is_report(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("report") == addtiming.REPORT


def _is_seconds(v: object) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= MAX_SECONDS


def drain_spool(metrics: Metrics | None, run_dir: str) -> int:
    """Observe and remove the reports spooled in ``run_dir``; returns how many were taken."""
    spool = os.path.join(run_dir, addtiming.SPOOL_NAME)
    taken = f"{spool}.{os.getpid()}.draining"
    try:
        os.rename(spool, taken)
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.warning("cannot take over the ADD report spool", path=spool, error=str(e)[:200])
        return 0
    try:
        with open(taken, "rb") as f:
            data = f.read(addtiming.SPOOL_MAX_BYTES + 4096)  # plugins stop appending at the cap
    except OSError:
        data = b""
    finally:
        try:
            os.unlink(taken)
        except OSError:
            pass
    count = 0
    for raw in data.splitlines():
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        count += observe_report(metrics, doc)
    return count


class SpoolDrainer:
    """Drains the spool at start and every ``interval`` seconds until stopped."""

    def __init__(self, metrics: Metrics | None, run_dir: str, interval: float = DRAIN_INTERVAL_SECONDS) -> None:
        self.metrics, self.run_dir, self.interval = metrics, run_dir, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.metrics is None:
            return
        self._thread = threading.Thread(target=self._run, name="add-report-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                drain_spool(self.metrics, self.run_dir)
            except Exception as e:  # a metric must never take the agent down
                log.warning("ADD report spool drain failed", error=repr(e)[:300])
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
