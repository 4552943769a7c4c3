"""A real Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver, started by the test session.

Only loopback listeners, generated certificates, a static-token admin user, RBAC authorization,
and a service-account signing key so TokenRequest works (no controller-manager runs: helpers
create what it would, e.g. each namespace's ``default`` ServiceAccount). Both processes are
stopped by PID. ``ControlPlane.api`` (peers.kubeapi.KubeAPI) talks plain REST; pods come back as
the plain dicts the API returns.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
from pathlib import Path

from peers.certs import CA, LOOPBACK_SANS, make_keypair
from peers.kubeapi import KubeAPI, write_kubeconfig

ETCD = "/usr/bin/etcd"
SERVICE_CIDR = "198.51.100.0/24"  # documentation range: allocated in etcd only, never routed
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartFailed(RuntimeError):
    pass


class ControlPlane:
    """Start with ``ControlPlane(workdir, apiserver_bin).start()``; always ``stop()``."""

    ADMIN_USER = "istio-cni-test-admin"
    # Hooks for a control plane inside a test node's private netns (tests/node/cluster.py).
    BIND_ADDRESS = "127.0.0.1"
    EXTRA_SANS: tuple[str, ...] = ()

    def __init__(self, workdir: Path, apiserver_bin: Path, etcd_bin: str = ETCD) -> None:
        self.dir = Path(workdir)
        self.apiserver_bin, self.etcd_bin = Path(apiserver_bin), etcd_bin
        self.token = secrets.token_hex(24)
        self.procs: dict[str, subprocess.Popen] = {}
        self.server = ""
        self.ca_file = self.dir / "pki" / "ca.crt"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.started_in = 0.0  # seconds from launch to /readyz ok
        self.api: KubeAPI | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self.api = self._client()
            self._wait_ready(t0 + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        write_kubeconfig(self.kubeconfig, self.server, self.ca_file, self.token, self.ADMIN_USER)
        # The ServiceAccount admission plugin needs the SA a pod runs as; the controller-manager
        # that would create it is not part of this control plane.
        self.api.ensure_service_account("default", "default")
        return self

    def stop(self) -> None:
        for name in ("kube-apiserver", "etcd"):  # apiserver first: it holds etcd connections
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines(True)[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- the helpers tests use most (everything else: self.api) ------------------------------------
    def create_namespace(self, name: str) -> dict:
        return self.api.create_namespace(name)

    def create_pod(self, manifest: dict) -> dict:
        return self.api.create_pod(manifest)

    def get_pod(self, namespace: str, name: str) -> dict:
        return self.api.get_pod(namespace, name)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.api.delete_pod(namespace, name)

    # -- pieces -----------------------------------------------------------------------------------
    def _client(self) -> KubeAPI:
        return KubeAPI(self.server, self.token, self.ca_file)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.dir, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def _start_etcd(self) -> str:
        if not os.access(self.etcd_bin, os.X_OK):
            raise StartFailed(f"{self.etcd_bin} missing: Debian package etcd-server (tools/setup-apt.sh)")
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        data = self.dir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        self._spawn("etcd", [
            self.etcd_bin, "--name", "istio-cni-test", "--data-dir", str(data),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"istio-cni-test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # test data: durability is irrelevant, latency is not
        ])
        return url

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self.dir / "pki"
        ca = CA(pki, "istio-cni-test-kube-ca")
        cert, key = ca.issue("apiserver", "kube-apiserver",
                             sans=LOOPBACK_SANS + ("DNS:kubernetes", "DNS:kubernetes.default",
                                                   "DNS:kubernetes.default.svc") + self.EXTRA_SANS)
        sa_key, sa_pub = make_keypair(pki, "service-account")
        tokens = pki / "tokens.csv"
        tokens.write_text(f'{self.token},{self.ADMIN_USER},uid-admin,"system:masters"\n')
        tokens.chmod(0o600)
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn("kube-apiserver", [
            str(self.apiserver_bin),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.BIND_ADDRESS}", f"--secure-port={port}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}", f"--client-ca-file={ca.cert}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",  # istio-init / istio-validation containers ask for NET_ADMIN etc.
            f"--cert-dir={pki}",
            "--profiling=false", "--v=1",
        ])

    def _wait_ready(self, deadline: float) -> None:
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise StartFailed(f"{name} exited with {proc.returncode} during start-up:\n{self.log_tail(name)}")
            try:
                code, body = self.api.raw("GET", "/readyz", timeout=2)
                if code == 200:
                    return
                last = f"/readyz {code}: {body[-300:]!r}"
            except (OSError, urllib.error.URLError) as e:
                last = f"/readyz: {e}"
            time.sleep(0.1)
        raise StartFailed(f"kube-apiserver not ready after {START_TIMEOUT}s ({last}):\n"
                          f"{self.log_tail('kube-apiserver')}")


def _measure_starts(count: int) -> None:
    """`cd tests && ../.venv/bin/python -m peers.controlplane 3`: time `count` cold starts."""
    import statistics
    import tempfile

    from peers.tools import CACHE

    times = []
    for i in range(count):
        with tempfile.TemporaryDirectory(prefix="cp-measure-") as d:
            cp = ControlPlane(Path(d), (CACHE / "bin" / "kube-apiserver").resolve())
            try:
                cp.start()
            finally:
                cp.stop()
            times.append(cp.started_in)
            print(f"start {i + 1}: /readyz after {cp.started_in:.2f} s", flush=True)
    print(f"median of {count}: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    import sys

    _measure_starts(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
