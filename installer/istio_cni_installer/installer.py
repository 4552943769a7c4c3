"""The install-and-keep-installed service: install once, then repair on every inotify event.

Loop: check everything -> write what is wrong -> check again -> publish readiness -> block on
inotify (net dir, bin dirs, run dir, service-account dir) -> repeat. There is no timer: a
change on disk wakes the loop within a millisecond or so, and only a failed write schedules a
bounded retry. Rewrites are rate-limited by a token bucket, and repeated reverts of the same
file within a short window are reported as a config fight naming the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from istio_cni.k8s import PREFETCH_NAME, TLS_SESSION_NAME
from istio_cni.log import log

from .atomic import remove_stale_temps
from .binaries import Binaries
from .bundle import build
from .conflist import ConfList, Waiting
from .health import Metrics
from .kubeconfig import Kubeconfig
from .watch import Watcher

if TYPE_CHECKING:
    from .settings import Settings

FIGHT_WINDOW_SECONDS = 10.0
FIGHT_THRESHOLD = 5
RETRY_MAX_SECONDS = 30.0
# Not a polling loop: inotify wakes us on every change. This long timeout only refreshes the
# liveness heartbeat and re-checks once in case an inotify queue overflow lost an event.
SAFETY_RECHECK_SECONDS = 60.0


class TokenBucket:
    def __init__(self, burst: int, rate: float) -> None:
        self.capacity, self.rate = float(burst), float(rate)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the next rewrite (0 = go now); takes the token."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class FightDetector:
    """Counts repairs per file; warns once per window when one keeps being reverted."""

    def __init__(
        self, metrics: Metrics, window: float = FIGHT_WINDOW_SECONDS, threshold: int = FIGHT_THRESHOLD
    ) -> None:
        self.metrics, self.window, self.threshold = metrics, window, threshold
        self.repairs: dict[str, deque] = {}
        self.warned_at: dict[str, float] = {}

    def record(self, what: str) -> bool:
        now = time.monotonic()
        q = self.repairs.setdefault(what, deque())
        q.append(now)
        while q and now - q[0] > self.window:
            q.popleft()
        if len(q) >= self.threshold and now - self.warned_at.get(what, -1e9) > self.window:
            self.warned_at[what] = now
            self.metrics.inc("istio_cni_config_fights_total")
            log.warning(
                "another component keeps reverting our config",
                file=what,
                reverts=len(q),
                window_seconds=self.window,
                hint="check the primary CNI's settings (e.g. Cilium cni.exclusive=false)",
            )
            return True
        return False


class Installer:
    """The service. ``start()`` runs the loop in a thread; ``stop()`` ends it (no cleanup here:
    the shutdown policy decides whether ``uninstall()`` runs)."""

    name = "installer"

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.conflist = ConfList(settings)
        self.kubeconfig = Kubeconfig(settings)
        self.binaries: list[Binaries] = []
        self.bucket = TokenBucket(settings.rewrite_burst, settings.rewrite_rate)
        self.fights = FightDetector(self.metrics)
        self._stop = threading.Event()
        self._watcher: Watcher | None = None
        self._thread: threading.Thread | None = None
        self._built_bundle: str | None = None
        self.error: BaseException | None = None
        self.installed_once = False
        self.ready_listeners: list = []  # called after each pass that found everything in place

    # --- parts ------------------------------------------------------------------------------

    def prepare(self) -> None:
        net = Path(self.s.mounted_cni_net_dir)
        if not net.is_dir():
            raise FileNotFoundError(f"MOUNTED_CNI_NET_DIR {net} does not exist (host path not mounted?)")
        Path(self.s.run_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in remove_stale_temps(net) + remove_stale_temps(self.s.run_dir):
            log.info("removed temp file left by an interrupted write", file=stale)
        if "istio-cni" in self.s.skip_cni_binaries:
            log.info("SKIP_CNI_BINARIES lists istio-cni: plugin binaries left alone")
            return
        bundle = self.s.plugin_bundle_dir
        if not bundle:
            self._built_bundle = tempfile.mkdtemp(prefix="istio-cni-bundle-")
            info = build(Path(self._built_bundle) / "bundle")
            bundle = info.path
            log.info("plugin bundle built", id=info.bundle_id, size_bytes=info.size_bytes)
        for mounted, host in self.s.bin_dirs():
            if not os.path.isdir(mounted):
                raise FileNotFoundError(f"CNI bin dir {mounted} does not exist (host path not mounted?)")
            self.binaries.append(Binaries(bundle, mounted, host, self.s.update_cni_binaries))

    def check(self) -> dict[str, list[str]]:
        """Problems by part; all empty lists = installed and in place."""
        out = {f"binaries:{b.dir}": b.check() for b in self.binaries}
        out["kubeconfig"] = self.kubeconfig.check()
        out["conflist"] = self.conflist.check()
        return out

    def installed_now(self) -> bool:
        """Every part (plugin, kubeconfig, conflist entry) in place right now."""
        return not any(self.check().values())

    def install_all(self) -> list[str]:
        """Fix every part that needs it; returns the parts written."""
        written = []
        for b in self.binaries:
            try:
                if b.ensure():
                    written.append(f"binaries:{b.dir}")
            except OSError as e:
                hint = " (read-only host path? set the bin dir for your platform)" if e.errno == 30 else ""
                raise OSError(e.errno, f"installing the plugin into {b.dir}: {e.strerror}{hint}") from None
        if self.kubeconfig.ensure():
            written.append("kubeconfig")
        try:
            f = self.conflist.install()
        except Waiting:
            f = None
        if f:
            written.append(f"conflist:{f}")
        return written

    def uninstall(self) -> None:
        self.conflist.uninstall()
        if self.kubeconfig.remove():
            log.info("plugin kubeconfig removed", path=str(self.kubeconfig.path))
        # The plugin's, kept beside the kubeconfig: its TLS session, and the description of its
        # pod GET for the front (it holds the token).
        for name, what in (
            (TLS_SESSION_NAME, "plugin TLS session removed"),
            (PREFETCH_NAME, "plugin pod GET description removed"),
        ):
            path = Path(self.s.run_dir) / name
            if path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
                log.info(what, path=str(path))
        for b in self.binaries:
            if b.remove(leave_standin=self.s.del_standin_on_uninstall):
                log.info("plugin removed", dir=str(b.dir), del_standin=self.s.del_standin_on_uninstall)

    # --- loop -------------------------------------------------------------------------------

    def _watch_all(self, w: Watcher) -> None:
        dirs = [self.s.mounted_cni_net_dir, self.s.run_dir, self.s.service_account_dir]
        dirs += [str(b.dir) for b in self.binaries]
        for d in dirs:
            if d not in w.paths.values():
                w.add(d)

    def reconcile(self, w: Watcher | None = None) -> bool:
        """One pass; returns readiness. Rewrites wait for the rate limiter (events that
        arrive meanwhile are folded into this pass)."""
        before = self.check()
        written: list[str] = []
        if any(before.values()):
            delay = self.bucket.delay() if self.installed_once else 0.0
            if delay and w is not None:
                w.wait(delay)
            written = self.install_all()
        if self.installed_once:
            for part in written:
                key = part if part in before else part.split(":")[0]
                self.metrics.inc("istio_cni_drift_repairs_total", part=part.split(":")[0])
                log.info("drift repaired", part=part, problems=before.get(key, []))
                self.fights.record(part)
        after = self.check() if any(before.values()) else before  # nothing was written: same state
        problems = [p for v in after.values() for p in v]
        ready = not problems
        if written:
            self.metrics.inc("istio_cni_installs_total", result="success" if ready else "incomplete")
        if ready:
            self.installed_once = True
        self.metrics.set_ready(ready, "; ".join(problems))
        if ready:
            for notify in self.ready_listeners:
                notify()
        return ready

    def run(self) -> None:
        backoff = 0.5
        with Watcher() as w:
            self._watcher = w
            while not self._stop.is_set():
                self.metrics.beat()
                self._watch_all(w)
                try:
                    self.reconcile(w)
                    backoff, timeout = 0.5, SAFETY_RECHECK_SECONDS
                except Exception as e:  # keep serving and retry; the message names the cause
                    self.metrics.inc("istio_cni_installs_total", result="failure")
                    self.metrics.set_ready(False, str(e))
                    log.error("install failed; will retry", error=str(e), retry_seconds=backoff)
                    timeout, backoff = backoff, min(backoff * 2, RETRY_MAX_SECONDS)
                if self._stop.is_set():
                    break
                w.wait(timeout)
        self._watcher = None

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.error = e
            self.metrics.alive = False
            log.error("installer loop died", error=str(e))

    def start(self) -> None:
        self.prepare()
        self._thread = threading.Thread(target=self._run_guarded, name="installer", daemon=True)
        self._thread.start()

    def stop(self, deadline: float | None = None) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.wake()
        if self._thread is not None:
            self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._built_bundle:
            shutil.rmtree(self._built_bundle, ignore_errors=True)
