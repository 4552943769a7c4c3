"""The node installer: how fast our entry is back after a primary CNI rewrites its conflist,
and what the bundle launcher costs per plugin exec. Baselines are measured in the same run.

* ``installer-repair``: the primary rewrites its conflist (temp + rename, our entry dropped);
  timed until the file holds our entry again. The running ``install-cni`` gets a large
  rewrite budget here so the number is the reaction time, not the rate limiter.
* ``installer-repair-floor``: the same rewrite in a directory nobody repairs, timed until this
  process itself sees the inotify event and re-reads the file: the floor any watcher pays.
* ``installer-fight-50ms``: a fake primary rewrites every 50 ms for 5 s against the installer
  with its default rate limit; per-rewrite repair latencies (median, p99) in extra_info.
* ``plugin-exec-launcher`` vs ``plugin-exec-venv``: one plugin exec (CNI VERSION) through the
  bundle's ``#!/bin/sh`` launcher vs the venv console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import harness
import pytest

ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_ROUNDS", "30"))
REPO = Path(__file__).resolve().parent.parent
FAKE_PRIMARY = REPO / "tests" / "support" / "fake_primary.py"
CALICO = {"name": "k8s-pod-network", "cniVersion": "0.3.1",
          "plugins": [{"type": "calico", "mtu": 1500}, {"type": "portmap", "snat": True}]}


def _write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".t")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _has_istio(path: Path) -> bool:
    try:
        return any(p.get("type") == "istio-cni" for p in json.loads(path.read_text())["plugins"])
    except (OSError, ValueError, KeyError):
        return False


def _wait_until(watcher, pred, timeout: float = 5.0) -> None:
    """Block on inotify (not a sleep loop) until ``pred()``; bounded."""
    import time

    end = time.monotonic() + timeout
    while not pred():
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("condition not reached within the bound")
        watcher.wait(left)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from istio_cni_installer.bundle import build

    return build(tmp_path_factory.mktemp("installer-bench") / "bundle")


def _layout(root: Path):
    from support.installer_fixtures import HostLayout, project_token

    lay = HostLayout(root=root, net_dir=root / "net", bin_dir=root / "bin", run_dir=root / "run",
                     sa_dir=root / "sa")
    lay.net_dir.mkdir(parents=True)
    lay.bin_dir.mkdir()
    project_token(lay.sa_dir, {"token": b"bench-token", "ca.crt": b"-----BEGIN CERTIFICATE-----\n"})
    _write(lay.net_dir / "10-calico.conflist", CALICO)
    return lay


def _start_installer(lay, bundle, **env):
    from support.installer_fixtures import InstallerProcess

    p = InstallerProcess(lay.env(None, PLUGIN_BUNDLE_DIR=bundle.path, LOG_LEVEL="warn", **env))
    from istio_cni_installer.watch import Watcher

    with Watcher() as w:
        w.add(str(lay.net_dir))
        _wait_until(w, lambda: _has_istio(lay.net_dir / "10-calico.conflist"), timeout=120)
    return p


def bench_installer_repair(benchmark, tmp_path, bundle):
    from istio_cni_installer.watch import Watcher

    lay = _layout(tmp_path / "host")
    conf = lay.net_dir / "10-calico.conflist"
    p = _start_installer(lay, bundle, REWRITE_BURST="100000", REWRITE_RATE="100000")
    samples = []
    try:
        with Watcher() as w:
            w.add(str(lay.net_dir))

            def setup():
                _wait_until(w, lambda: _has_istio(conf))
                w.wait(0)  # drop events of the previous round
                return (), {}

            def rewrite_until_repaired():
                import time

                t0 = time.perf_counter()
                _write(conf, CALICO)
                _wait_until(w, lambda: _has_istio(conf))
                samples.append(time.perf_counter() - t0)

            benchmark.pedantic(rewrite_until_repaired, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    finally:
        assert p.terminate() == 0
    benchmark.extra_info.update(role="installer-repair", median_ms=harness.percentile(samples, 50) * 1e3,
                                p99_ms=harness.percentile(samples, 99) * 1e3, rounds=len(samples))


def bench_installer_repair_floor(benchmark, tmp_path):
    """Baseline: rewrite + inotify delivery + re-read, with no installer involved."""
    from istio_cni_installer.watch import Watcher

    d = tmp_path / "floor"
    d.mkdir()
    conf = d / "10-calico.conflist"
    _write(conf, CALICO)
    with Watcher() as w:
        w.add(str(d))

        def setup():
            w.wait(0)  # drop events of the previous round
            return (), {}

        def rewrite_and_observe():
            _write(conf, CALICO)
            if not w.wait(5.0):
                raise AssertionError("no inotify event for our own rewrite")
            json.loads(conf.read_text())

        benchmark.pedantic(rewrite_and_observe, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    benchmark.extra_info.update(role="installer-repair-floor")


def bench_installer_fight_50ms(benchmark, tmp_path, bundle):
    lay = _layout(tmp_path / "host")
    conf = lay.net_dir / "10-calico.conflist"
    p = _start_installer(lay, bundle)  # default rate limit (burst 10, 20/s)
    summary = {}
    try:
        def fight():
            r = subprocess.run([sys.executable, str(FAKE_PRIMARY), str(conf), "0.05", "5"],
                               capture_output=True, text=True, timeout=120)
            summary.update(json.loads(r.stdout))

        benchmark.pedantic(fight, rounds=1, iterations=1)
    finally:
        assert p.terminate() == 0
    lat = summary["latencies_ms"]
    assert summary["repaired"] == summary["rewrites"]
    benchmark.extra_info.update(role="installer-fight-50ms", rewrites=summary["rewrites"],
                                repaired=summary["repaired"], median_ms=harness.percentile(lat, 50),
                                p99_ms=harness.percentile(lat, 99), max_ms=max(lat))


def _version(argv) -> None:
    r = harness.run_process(argv, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    r.check("plugin VERSION")
    assert b"supportedVersions" in r.stdout


def bench_plugin_exec_launcher(benchmark, tmp_path, bundle):
    from istio_cni_installer.binaries import Binaries

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    Binaries(bundle.path, str(bin_dir), str(bin_dir)).ensure()
    benchmark.pedantic(_version, args=([bin_dir / "istio-cni"],), rounds=ROUNDS, warmup_rounds=2)
    benchmark.extra_info.update(role="plugin-exec-launcher", bundle_mib=round(bundle.size_bytes / 2**20, 1))


def bench_plugin_exec_venv(benchmark):
    benchmark.pedantic(_version, args=([REPO / ".venv" / "bin" / "istio-cni"],), rounds=ROUNDS,
                       warmup_rounds=2)
    benchmark.extra_info.update(role="plugin-exec-venv")
