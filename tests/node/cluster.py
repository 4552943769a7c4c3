"""One real Kubernetes node in a private network + mount namespace, started by the test session.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (CRI, runc, overlayfs)
and kubelet all run inside the namespaces of one holder process (node/sandbox.py); pods get a
bridge primary CNI on ``POD_CIDR``; the ``kubernetes`` Service IP reaches the API server through
two DNAT rules in the node's netns (no kube-proxy). Images come from tools/images/build.py and
are imported with ``ctr``. Every process is stopped by PID, the node's cgroups are removed.
Research behind every setting: ../shared/research/node-in-a-box.md.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

from peers.controlplane import SERVICE_CIDR, ControlPlane
from peers.kubeapi import KubeAPI

from node.sandbox import Holder, die_with_parent, netns_connection

NODE_NAME = "istio-cni-test-node"
# On the node netns' lo only (kubelet refuses loopback/link-local). Also the API server's address:
# a second node (node/twonode.py) reaches the control plane of this one there.
NODE_IP = "192.0.2.210"
SERVICE_IP = "198.51.100.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
# A documentation range, not link-local: the plugin (like upstream) needs a non-link-local pod
# address to decide on IPv6, so 169.254/16 pods fail their ADD.
POD_CIDR = "203.0.113.0/24"
POD_GATEWAY = "203.0.113.1"
REF_CNI = Path("/usr/lib/cni")
NODE_READY_TIMEOUT = 120.0
IMPORT_TIMEOUT = 600.0
# node-lifecycle-controller lifts the `node.kubernetes.io/not-ready` taint kubelet registers with;
# replicaset-controller and job-controller own the pods the repair tests break (delete mode
# relies on the owner recreating the pod; a Job's pod is the restartPolicy Never case).
CONTROLLERS = ("serviceaccount-controller,daemonset-controller,garbage-collector-controller,namespace-controller,"
               "root-ca-certificate-publisher-controller,node-lifecycle-controller,replicaset-controller,"
               "job-controller")


class NodeError(RuntimeError):
    pass


class NodeKubeAPI(KubeAPI):
    """KubeAPI whose connections are opened inside the node's netns (the API listens there)."""

    def __init__(self, holder_pid: int, server: str, token: str, ca_file: Path) -> None:
        super().__init__(server, token, ca_file)
        self.holder_pid = holder_pid
        u = urllib.parse.urlsplit(server)
        self._addr = (u.hostname, u.port)

    def raw(self, method: str, path: str, body: dict | None = None, *, timeout: float = 15,
            content_type: str = "application/json") -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        sock = netns_connection(self.holder_pid, self._addr, timeout)
        conn = http.client.HTTPSConnection(self._addr[0], self._addr[1], timeout=timeout, context=self._ctx)
        conn.sock = self._ctx.wrap_socket(sock, server_hostname=self._addr[0])
        try:
            conn.request(method, path, body=data, headers={
                "Authorization": f"Bearer {self.token}", "Accept": "application/json",
                "Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def watch_pods(self, *a, **kw):  # the urllib watch of KubeAPI would connect from the host netns
        raise NotImplementedError("poll with get/list inside the node tier")


class NodeControlPlane(ControlPlane):
    """peers.controlplane.ControlPlane with every process inside the node's namespaces."""

    BIND_ADDRESS = "0.0.0.0"  # the node netns' own addresses only: pods reach it via SERVICE_IP
    EXTRA_SANS = (f"IP:{NODE_IP}", f"IP:{SERVICE_IP}")

    def __init__(self, workdir: Path, apiserver_bin: Path, holder: Holder) -> None:
        super().__init__(workdir, apiserver_bin)
        self.holder = holder

    def _client(self) -> KubeAPI:
        return NodeKubeAPI(self.holder.pid, self.server, self.token, self.ca_file)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = spawn(self.dir, name, [*self.holder.prefix(), *argv])
        self.procs[name] = proc
        return proc

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])


def spawn(logdir: Path, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    log = open(Path(logdir) / f"{name}.log", "wb")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=logdir, env=env, start_new_session=True, preexec_fn=die_with_parent)
    finally:
        log.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-lines:])
    except FileNotFoundError:
        return "(no log)\n"


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Node:
    """``Node(workdir, bins, images).start()`` ... ``stop()``; ``bins``: name -> path of kube-apiserver,
    kube-controller-manager, kube-scheduler, kubelet, crictl; ``images``: name -> (ref, archive).
    ``name``, ``ip``, ``pod_cidr``/``pod_gateway``: this node's identity (a second node differs)."""

    def __init__(self, workdir: Path, bins: dict[str, Path], images: dict[str, tuple[str, Path]], *,
                 name: str = NODE_NAME, ip: str = NODE_IP, pod_cidr: str = POD_CIDR,
                 pod_gateway: str = POD_GATEWAY) -> None:
        self.dir = Path(workdir)
        self.name, self.ip, self.pod_cidr, self.pod_gateway = name, ip, pod_cidr, pod_gateway
        self.max_pods = 110  # kubelet's default; the two-node scenarios put many pods on a node
        self.register_with_taints: list[dict] = []  # kubelet registerWithTaints
        self.bins, self.images = bins, images
        self.holder = Holder(self.dir)
        self.cp: NodeControlPlane | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = self.dir / "logs"
        self.cni_bin_dir = self.dir / "cni" / "bin"
        self.cni_conf_dir = self.dir / "cni" / "net.d"
        self.run_dir = self.dir / "istio-cni-run"  # the chart's cniAgentRunDir on this node
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.netns_dir = self.containerd_dir / "state" / "io.containerd.grpc.v1.cri" / "netns"
        self.kubelet_dir = self.dir / "kubelet"
        self.pod_logs = self.dir / "pod-logs"
        self.cgroup_root = f"/istio-cni-test-node-{secrets.token_hex(4)}"
        self.kubeconfig: Path | None = None  # kubelet's; the control plane's admin one by default
        self.timings: dict[str, float] = {}
        self.import_error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Node:
        t0 = time.monotonic()
        for d in (self.logs, self.cni_bin_dir, self.cni_conf_dir, self.run_dir, self.containerd_dir,
                  self.kubelet_dir, self.pod_logs):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self.holder.start()
            self._network()
            self._cni()
            self._containerd()
            # The image import (tens of seconds, disk-bound) overlaps the control plane's start.
            importer = threading.Thread(target=self._import_images, name="node-image-import", daemon=True)
            importer.start()
            self.cp = NodeControlPlane(self.dir / "control-plane", self.bins["kube-apiserver"], self.holder)
            self.cp.start()
            self._service_dnat()
            self._controllers()
            self._kubelet()
            importer.join(IMPORT_TIMEOUT)
            if importer.is_alive():
                raise NodeError(f"image import still running after {IMPORT_TIMEOUT}s")
            if self.import_error:
                raise self.import_error
            self._wait_node_ready(time.monotonic() + NODE_READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.timings["node_up"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop everything this node started, each step on its own (one failing step never
        leaves the rest running); raises NodeError listing what could not be cleaned."""
        errors: list[str] = []

        def step(what: str, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - collected and raised together below
                errors.append(f"{what}: {type(e).__name__}: {e}")

        if "kubelet" in self.procs:
            step("stop kubelet", stop_process, self.procs.pop("kubelet"))
        if "crictl" in self.bins and "containerd" in self.procs and self.procs["containerd"].poll() is None:
            # Every sandbox through the CNI chain's DEL, then removed; bounded.
            step("remove pod sandboxes", lambda: self.crictl("rmp", "--force", "--all", timeout=90, check=False))
        for name in ("containerd", "kube-scheduler", "kube-controller-manager"):
            if name in self.procs:
                step(f"stop {name}", stop_process, self.procs.pop(name))
        if self.cp:
            step("stop control plane", self.cp.stop)
        step("end leftover processes", self._end_members)
        step("stop namespace holder", self.holder.stop)
        errors += self._remove_cgroups()
        if errors:
            raise NodeError("; ".join(errors))

    def _leftovers(self) -> list[int]:
        """Processes this node started that are still alive: anything in the node's mount
        namespace (containerd shims) and anything in the node's pod cgroups (containers)."""
        pids = set(self.holder.members())
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for procs in (hierarchy / self.cgroup_root.lstrip("/")).rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
        pids.discard(self.holder.pid)
        return sorted(pids)

    def _end_members(self) -> None:
        """End what is left (see _leftovers) by PID: SIGTERM, then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._leftovers():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 10
            while self._leftovers() and time.monotonic() < end:
                time.sleep(0.1)
        left = self._leftovers()
        if left:
            raise NodeError(f"processes still in the node after SIGKILL: {left}")

    def _remove_cgroups(self) -> list[str]:
        left = []
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / self.cgroup_root.lstrip("/")
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # EBUSY while the last task exits
                        time.sleep(0.1)
                else:
                    left.append(str(d))
        return [f"cgroups not removable: {left[:5]}"] if left else []

    # -- pieces -----------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = spawn(self.logs, name, [*self.holder.prefix(), *argv])
        self.procs[name] = proc
        return proc

    def _network(self) -> None:
        h = self.holder
        h.run("ip", "addr", "add", f"{self.ip}/32", "dev", "lo")
        # Processes in the node's own netns (the plugin's direct path, kubelet) dial the Service IP:
        # without a route that is "network is unreachable" before the OUTPUT DNAT can apply.
        h.run("ip", "route", "add", SERVICE_CIDR, "dev", "lo", "src", self.ip)

    def _service_dnat(self) -> None:
        to = f"{NODE_IP}:{self.cp.port}"  # the API server (on the first node)
        for chain in ("PREROUTING", "OUTPUT"):
            self.holder.run("iptables-legacy", "-w", "-t", "nat", "-A", chain, "-d", f"{SERVICE_IP}/32", "-p", "tcp",
                            "--dport", "443", "-j", "DNAT", "--to-destination", to)

    def _controllers(self) -> None:
        pki = self.cp.dir / "pki"
        self._spawn("kube-controller-manager", [
            str(self.bins["kube-controller-manager"]), f"--kubeconfig={self.cp.kubeconfig}",
            f"--controllers={CONTROLLERS}", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={self.cp.ca_file}", "--use-service-account-credentials=false",
            "--bind-address=127.0.0.1", "--secure-port=0", "--concurrent-gc-syncs=2", "--v=1"])
        self._spawn("kube-scheduler", [
            str(self.bins["kube-scheduler"]), f"--kubeconfig={self.cp.kubeconfig}",
            f"--authentication-kubeconfig={self.cp.kubeconfig}", f"--authorization-kubeconfig={self.cp.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1"])

    def _cni(self) -> None:
        for plugin in ("bridge", "host-local", "loopback"):
            shutil.copy2(REF_CNI / plugin, self.cni_bin_dir / plugin)
        self.primary_conflist = self.cni_conf_dir / "10-bridge.conflist"
        self.primary_conflist.write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "node-bridge",
            "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "ipam"),
                                  "ranges": [[{"subnet": self.pod_cidr, "gateway": self.pod_gateway}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]}}]}, indent=2) + "\n")

    def in_node(self, path: Path) -> Path:
        """``path`` as the node's own processes see it (a second node binds some dirs elsewhere)."""
        return path

    def _containerd(self) -> None:
        d = self.containerd_dir
        pause_ref = self.images["pause"][0]
        config = d / "config.toml"
        config.write_text(f"""version = 2
root = "{d / 'root'}"
state = "{self.in_node(d / 'state')}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.in_node(self.cni_bin_dir)}"
    conf_dir = "{self.in_node(self.cni_conf_dir)}"
    max_conf_num = 1
""")
        proc = self._spawn("containerd", ["containerd", "--config", str(config), "--log-level", "info"])
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise NodeError(f"containerd exited {proc.returncode}:\n{tail(self.logs / 'containerd.log')}")
            if self.socket.exists() and self.holder.run(
                    "ctr", "--address", str(self.socket), "version", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NodeError(f"containerd socket not up after 30s:\n{tail(self.logs / 'containerd.log')}")
            time.sleep(0.1)

    def _import_images(self) -> None:
        try:
            self._import_all()
        except BaseException as e:  # handed to start()
            self.import_error = e

    def _import_all(self) -> None:
        t0 = time.monotonic()
        for name in ("pause", "workload", "node"):  # pause first: every sandbox needs it
            if name not in self.images:
                continue
            ref, archive = self.images[name]
            out = self.holder.run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "import",
                                  str(archive), timeout=300, check=False)
            if out.returncode != 0:
                raise NodeError(f"ctr images import {archive} failed: {out.stderr[-1500:]}")
            listed = self.holder.run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "ls", "-q",
                                     timeout=30).stdout.split()
            if ref not in listed:
                raise NodeError(f"{ref} not in containerd after importing {archive} (have {listed})")
        self.timings["image_import"] = time.monotonic() - t0

    def _kubelet(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():  # kubelet wants --cgroup-root to exist
            if hierarchy.is_dir() and (hierarchy / "cgroup.procs").exists():
                (hierarchy / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        cpuset = Path("/sys/fs/cgroup/cpuset")
        if (cpuset / "cpuset.cpus").exists():  # a new v1 cpuset starts empty: no task could join it
            for f in ("cpuset.cpus", "cpuset.mems"):
                (cpuset / self.cgroup_root.lstrip("/") / f).write_text((cpuset / f).read_text())
        resolv = self.dir / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.253\n")  # nothing answers: pods here need no DNS
        cfg = self.dir / "kubelet-config.json"
        cfg.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
            "failSwapOn": False, "oomScoreAdj": 0, "protectKernelDefaults": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.cp.ca_file)}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.ip, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "podLogsDir": str(self.pod_logs), "volumePluginDir": str(self.dir / "volume-plugins"),
            "resolvConf": str(resolv), "registerNode": True, "maxPods": self.max_pods,
            "registerWithTaints": self.register_with_taints,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "syncFrequency": "5s", "fileCheckFrequency": "5s", "nodeStatusUpdateFrequency": "5s",
            "serializeImagePulls": False, "localStorageCapacityIsolation": False,
        }))
        self._spawn("kubelet", [
            str(self.bins["kubelet"]), f"--config={cfg}", f"--kubeconfig={self.kubeconfig or self.cp.kubeconfig}",
            f"--root-dir={self.kubelet_dir}", f"--cert-dir={self.kubelet_dir / 'pki'}",
            f"--hostname-override={self.name}", f"--node-ip={self.ip}", "--v=2"])

    def _wait_node_ready(self, deadline: float) -> None:
        last = "node not registered yet"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise NodeError(f"{name} exited {proc.returncode} while the node started:\n"
                                    f"{tail(self.logs / f'{name}.log')}")
            code, body = self.cp.api.raw("GET", f"/api/v1/nodes/{self.name}")
            if code == 200:
                conds = {c["type"]: c for c in json.loads(body)["status"].get("conditions", [])}
                ready = conds.get("Ready", {})
                # The taints it registered with are the node's own business (a test lifts them).
                registered = {t["key"] for t in self.register_with_taints}
                taints = [t for t in json.loads(body)["spec"].get("taints") or [] if t["key"] not in registered]
                if ready.get("status") == "True" and not taints:
                    return
                last = f"Ready={ready.get('status')}: {ready.get('message', '')}; taints {taints}"
            time.sleep(0.25)
        raise NodeError(f"node not Ready after {NODE_READY_TIMEOUT}s ({last}); kubelet log:\n"
                        f"{tail(self.logs / 'kubelet.log', 60)}\ncontainerd log:\n{tail(self.logs / 'containerd.log')}")

    # -- tools --------------------------------------------------------------------------------------
    def crictl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return self.holder.run(str(self.bins["crictl"]), "--runtime-endpoint", f"unix://{self.socket}",
                               "--timeout", "30s", *args, timeout=timeout, check=check)

    def diagnostics(self) -> str:
        """Log tails of every node daemon, for failure messages."""
        parts = [f"== {n} ==\n{tail(self.logs / f'{n}.log', 25)}" for n in ("kubelet", "containerd")]
        if self.cp:
            parts.append(f"== kube-apiserver ==\n{self.cp.log_tail('kube-apiserver', 10)}")
        return "\n".join(parts)
