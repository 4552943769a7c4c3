"""pytest plugin: the plugin bundle and host layouts for tests and benchmarks (test-only code,
so it lives under tests/ and never ships in the wheel).

Registered with ``pytest_plugins = [..., "support.installer_fixtures"]`` in the root conftest
(``tests/`` is on ``sys.path``; benchmarks/conftest.py adds it too). ``plugin_bundle`` builds
the bundle from the test venv once per session and deploys it with the real installer code into
a temp bin dir, so tests exec ``plugin_bundle.launcher`` exactly as kubelet would exec
``/opt/cni/bin/istio-cni``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from istio_cni.value import Value
from istio_cni_installer.binaries import Binaries
from istio_cni_installer.bundle import build


class PluginBundle(Value):
    __slots__ = ("bundle_dir", "bin_dir", "launcher", "bundle_id", "size_bytes")
    bundle_dir: Path
    bin_dir: Path
    launcher: Path
    bundle_id: str
    size_bytes: int


@pytest.fixture(scope="session")
def plugin_bundle(tmp_path_factory) -> PluginBundle:
    root = tmp_path_factory.mktemp("plugin-bundle")
    info = build(root / "bundle")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    b = Binaries(info.path, str(bin_dir), str(bin_dir))
    b.ensure()
    return PluginBundle(
        bundle_dir=Path(info.path),
        bin_dir=bin_dir,
        launcher=bin_dir / "istio-cni",
        bundle_id=info.bundle_id,
        size_bytes=info.size_bytes,
    )


class HostLayout(Value):
    """Temp stand-ins for the host paths the DaemonSet mounts."""

    __slots__ = ("root", "net_dir", "bin_dir", "run_dir", "sa_dir")
    root: Path
    net_dir: Path
    bin_dir: Path
    run_dir: Path
    sa_dir: Path

    def env(self, bundle: PluginBundle | None = None, **extra: str) -> dict:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MOUNTED_CNI_NET_DIR": str(self.net_dir),
            "CNI_NET_DIR": str(self.net_dir),
            "MOUNTED_CNI_BIN_DIR": str(self.bin_dir),
            "CNI_BIN_DIR": str(self.bin_dir),
            "MOUNTED_SECONDARY_BIN_DIR": str(self.root / "no-secondary"),
            "CNI_AGENT_RUN_DIR": str(self.run_dir),
            "SERVICE_ACCOUNT_DIR": str(self.sa_dir),
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_NODE_NAME": "node-a",
            "BIND_ADDRESS": "127.0.0.1",
            "READINESS_PORT": "0",
            "MONITORING_PORT": "0",
            "DISABLE_SAFE_UPGRADE": "true",
            "LOG_LEVEL": "info",
            # the installer alone unless a test turns the node agent / repair controller on
            "AGENT_ENABLED": "false",
            "REPAIR_ENABLED": "false",
            "STARTUP_TAINT_KEY": "",  # no node to untaint behind the unreachable API address above
        }
        if bundle is not None:
            env["PLUGIN_BUNDLE_DIR"] = str(bundle.bundle_dir)
        env.update(extra)
        return env


def project_token(sa_dir: Path, files: dict[str, bytes]) -> None:
    """Publish ``files`` into ``sa_dir`` the way kubelet's atomic writer does: a new timestamped
    directory, a ``..data_tmp`` symlink renamed over ``..data``, and per-file symlinks
    ``name -> ..data/name``; the previous timestamped directory is then deleted."""
    sa_dir.mkdir(parents=True, exist_ok=True)
    old = os.readlink(sa_dir / "..data") if (sa_dir / "..data").is_symlink() else None
    ts = sa_dir / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    ts.mkdir()
    for name, data in files.items():
        (ts / name).write_bytes(data)
    tmp = sa_dir / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(ts.name)
    os.rename(tmp, sa_dir / "..data")
    for name in files:
        link = sa_dir / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old:
        shutil.rmtree(sa_dir / old, ignore_errors=True)


@pytest.fixture
def host_layout(tmp_path) -> HostLayout:
    root = tmp_path / "host"
    lay = HostLayout(
        root=root,
        net_dir=root / "etc/cni/net.d",
        bin_dir=root / "opt/cni/bin",
        run_dir=root / "var/run/istio-cni",
        sa_dir=root / "sa",
    )
    for d in (lay.net_dir, lay.bin_dir):
        d.mkdir(parents=True)
    project_token(
        lay.sa_dir,
        {
            "token": b"token-one",
            "ca.crt": b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
            "namespace": b"istio-system",
        },
    )
    return lay


class InstallerProcess:
    """``install-cni`` as a real child process; its JSON log lines are collected by a thread.

    ``wait_for(pred, timeout)`` blocks until a log record satisfies ``pred`` (bounded: returns
    the record or fails the test with the log tail)."""

    def __init__(self, env: dict, args: tuple = ()) -> None:
        self.records: list[dict] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "istio_cni_installer", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None  # started with stdout=PIPE
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"msg": line.rstrip()}
            with self._cond:
                self.raw.append(line)
                self.records.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 30.0, start: int = 0) -> dict:
        end = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.records):
                    if pred(self.records[i]):
                        return self.records[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail("install-cni never logged the expected record; log tail:\n" + "".join(self.raw[-30:]))
                self._cond.wait(min(left, 0.5))

    def wait_ready(self, timeout: float = 60.0) -> dict:
        return self.wait_for(lambda r: r.get("msg") == "readiness changed" and r.get("ready") is True, timeout)

    def port(self, service: str) -> int:
        return self.wait_for(lambda r: r.get("msg") == "serving" and r.get("service") == service)["port"]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
