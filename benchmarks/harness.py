"""What every ADD benchmark shares: exec a CNI plugin like kubelet does, fresh pod netns, pods.

* ``run_process``: fork/exec one program with stdin/stdout/stderr on memfds (no pipes, so no
  deadlock and no reader threads in the timed part) and reap it with ``wait4``. A watchdog kills
  it after ``timeout``. With ``rss=True`` it runs under ``/usr/bin/time -f %M`` for the
  program's peak RSS: ``wait4``'s own ``ru_maxrss`` is useless here, because a child forked (or
  vforked) from the large pytest process starts out charged with the parent's resident pages.
* ``PodNetns``: a named netns that looks like a pod after the primary CNI ran: ``lo`` up and
  ``eth0`` (a veth whose peer also stays inside the netns, never in the host's) holding a
  documentation-range address (upstream's plugin refuses a netns without a non-link-local
  address: ``no valid local IP address found``).
* ``sidecar_pod`` / ``plain_pod`` / ``bench_pods``: the pod objects the API server returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from istio_cni.tools import netns as nsutil

TIME = "/usr/bin/time"  # GNU time (Debian package ``time``), for peak RSS
POD_SUBNET = "192.0.2"  # TEST-NET-1, only ever assigned inside benchmark namespaces
POD_NAMESPACE = "bench"
NODE_NAME = "bench-node"
REDIRECT_POD = "bench-sidecar"  # injected pod
PLAIN_POD = "bench-plain"  # no sidecar: passed through
CONCURRENT = 64  # simultaneous ADDs in the concurrency benchmarks
# Debian 12's interpreter: the one the node image's bundle carries (tools/images/build.py
# installs it, installer/Dockerfile builds the bundle with it). Static libpython, PGO/LTO:
# 1.3-2.3 ms faster per direct ADD than pyenv's shared build under the venv
# (benchmarks/interp_compare.py), so measuring the venv's bundle overstates what users run.
IMAGE_PYTHON = "/usr/bin/python3.11"
REPO = Path(__file__).resolve().parent.parent


class ProcResult:
    """One finished process: exit code, output, wall seconds, peak RSS in KiB."""

    __slots__ = ("argv", "rc", "stdout", "stderr", "seconds", "maxrss_kb", "timed_out")

    def __init__(self, argv, rc, stdout, stderr, seconds, maxrss_kb, timed_out):
        self.argv, self.rc, self.stdout, self.stderr = argv, rc, stdout, stderr
        self.seconds, self.maxrss_kb, self.timed_out = seconds, maxrss_kb, timed_out

    def check(self, what: str) -> ProcResult:
        """Raise with the process's own words when it did not exit 0."""
        if self.rc != 0:
            why = "timed out and was killed" if self.timed_out else f"exited {self.rc}"
            raise AssertionError(
                f"{what}: {' '.join(map(str, self.argv))} {why}\n"
                f"stdout: {self.stdout.decode(errors='replace')[-2000:]}\n"
                f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"
            )
        return self


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _drain(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def run_process(argv, env: dict, stdin: bytes = b"", timeout: float = 60.0,
                rss: bool = False) -> ProcResult:
    """Exec ``argv`` with exactly ``env``; wall time covers fork+exec to reaped exit.

    ``maxrss_kb`` is the program's peak RSS in KiB when ``rss`` is true, else None.
    """
    fds = [_memfd("stdin", stdin), _memfd("stdout"), _memfd("stderr")]
    if rss:
        fds.append(_memfd("rss"))
        argv = [TIME, "-f", "%M", "-o", f"/proc/{os.getpid()}/fd/{fds[3]}", *argv]
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], stdin=fds[0], stdout=fds[1],
                                stderr=fds[2], env=env, close_fds=True)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        maxrss = None
        if rss:
            text = _drain(fds[3]).decode().split()
            if not text or not text[-1].isdigit():
                raise AssertionError(f"{TIME} reported no peak RSS for {argv}: {text!r}")
            maxrss = int(text[-1])
        return ProcResult(argv, proc.returncode, _drain(fds[1]), _drain(fds[2]), seconds,
                          maxrss, killed.is_set())
    finally:
        for fd in fds:
            os.close(fd)


class PodNetns:
    """A pod-like named netns; ``index`` picks the address 192.0.2.<10+index % 240>."""

    def __init__(self, tag: str = "bench", index: int = 0) -> None:
        self.name = nsutil.unique_name(tag)
        self.path = nsutil.path(self.name)
        self.address = f"{POD_SUBNET}.{10 + index % 240}"
        nsutil.add(self.name)
        try:
            # This kernel has no dummy links; a veth pair with both ends inside the netns.
            batch = (f"link add eth0 type veth peer name eth0-peer\n"
                     f"addr add {self.address}/24 dev eth0\n"
                     f"link set eth0-peer up\n"
                     f"link set eth0 up\n")
            subprocess.run(["ip", "-n", self.name, "-batch", "-"], input=batch, text=True,
                           check=True, capture_output=True, timeout=30)
        except BaseException:
            self.delete()
            raise

    def prev_result(self, cni_version: str = "1.0.0") -> dict:
        """What a primary plugin (bridge + host-local) would hand on for this netns."""
        return {
            "cniVersion": cni_version,
            "interfaces": [{"name": "eth0", "sandbox": self.path}],
            "ips": [{"address": f"{self.address}/24", "gateway": f"{POD_SUBNET}.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": f"{POD_SUBNET}.1"}],
        }

    def delete(self) -> None:
        nsutil.delete(self.name)


class NetnsPool:
    """Namespaces made in pytest-benchmark's ``setup=``, all deleted by ``close()``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.made: list[PodNetns] = []

    def new(self) -> PodNetns:
        ns = PodNetns(self.tag, len(self.made))
        self.made.append(ns)
        return ns

    def recycle(self) -> None:
        """Delete every namespace made so far (call between rounds to keep few alive)."""
        while self.made:
            self.made.pop().delete()

    close = recycle


def cni_env(plugin_dir: str, netns: PodNetns, pod_name: str, container_id: str) -> dict:
    """The environment kubelet/containerd give a chained plugin for ADD."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{plugin_dir}:/usr/lib/cni",
        "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={pod_name};"
                     f"K8S_POD_INFRA_CONTAINER_ID={container_id}"),
    }


def netconf(run_dir: str, prev_result: dict | None) -> dict:
    """Today's upstream installer entry (one dialect both plugins read), as a chained plugin."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "istio-cni",
        "plugin_log_level": "info",
        "cni_agent_run_dir": run_dir,
        "exclude_namespaces": ["kube-system"],
        "pod_namespace": "istio-system",
        "native_nftables": False,
        "ambient_enabled": False,
    }
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


_STATUS = ('{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy"],'
           '"imagePullSecrets":null,"revision":"default"}')


def sidecar_pod(name: str) -> dict:
    """An injected pod (CNI mode: no istio-init): app + istio-proxy, upstream defaults."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": POD_NAMESPACE, "uid": f"uid-{name}",
            "labels": {"app": "bench", "security.istio.io/tlsMode": "istio"},
            "annotations": {"sidecar.istio.io/status": _STATUS,
                            "kubectl.kubernetes.io/default-container": "app"},
        },
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [
                {"name": "app", "image": "registry.example/app:1",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                 "args": ["proxy", "sidecar", "--domain", "bench.svc.cluster.local"],
                 "env": [{"name": "ISTIO_META_POD_NAME", "value": name}],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337,
                                     "runAsNonRoot": True}},
            ],
        },
        "status": {"phase": "Pending"},
    }


def plain_pod(name: str) -> dict:
    """A pod without a sidecar: the plugin must pass it through without netfilter work."""
    pod = sidecar_pod(name)
    pod["metadata"]["annotations"] = {}
    pod["metadata"]["labels"] = {"app": "bench"}
    pod["spec"]["containers"] = pod["spec"]["containers"][:1]
    return pod


def bench_pods() -> list[dict]:
    """Every pod the benchmarks ADD: the redirected one, the plain one, the concurrent ones."""
    pods = [sidecar_pod(REDIRECT_POD), plain_pod(PLAIN_POD)]
    pods += [sidecar_pod(f"{REDIRECT_POD}-{i}") for i in range(CONCURRENT)]
    return pods


def percentile(samples, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of an empty sample")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def _in_netns(ns: PodNetns, *cmd: str) -> str:
    proc = subprocess.run(["/usr/bin/nsenter", f"--net={ns.path}", *cmd], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns.name} failed: {proc.stderr.strip()}")
    return proc.stdout


def _save_rules(ns: PodNetns, tool: str) -> int:
    return sum(1 for line in _in_netns(ns, tool).splitlines() if line.startswith(("-A ", "-I ")))


def _native_nft_rules(ns: PodNetns) -> int:
    """Rules in our inet ``istio-proxy-*`` tables (upstream gives every rule a counter)."""
    count, ours = 0, False
    for line in _in_netns(ns, "nft", "list", "ruleset").splitlines():
        if line.startswith("table "):
            ours = line.startswith("table inet istio-proxy-")
        elif ours and " counter " in f" {line.strip()} ":
            count += 1
    return count


def committed_rules(ns: PodNetns) -> dict:
    """Rule counts per place a backend can put them: legacy x_tables, iptables-nft, native nft."""
    return {
        "legacy-v4": _save_rules(ns, "iptables-legacy-save"),
        "nft-v4": _save_rules(ns, "iptables-nft-save"),
        "legacy-v6": _save_rules(ns, "ip6tables-legacy-save"),
        "nft-v6": _save_rules(ns, "ip6tables-nft-save"),
        "native-nft": _native_nft_rules(ns),
    }


def expected_rules(ruleset) -> dict:
    return {
        "v4": sum(len(t.rules) for t in ruleset.v4),
        "v6": sum(len(t.rules) for t in ruleset.v6),
        "native-nft": sum(1 for t in ruleset.nft for s in t.statements
                          if s.startswith(("add rule", "insert rule"))),
    }


def assert_redirect_committed(ns: PodNetns, ruleset, who: str) -> str:
    """The netns holds the whole rule set in one backend; returns which backend."""
    have, want = committed_rules(ns), expected_rules(ruleset)
    for backend in ("legacy", "nft"):
        if want["v4"] and have[f"{backend}-v4"] == want["v4"] and have[f"{backend}-v6"] == want["v6"]:
            return f"iptables-{backend}"
    if want["native-nft"] and have["native-nft"] == want["native-nft"]:
        return "native-nft"
    raise AssertionError(f"{who}: rules in {ns.name} do not match the pod's rule set: "
                         f"found {have}, expected {want}")


def assert_nothing_committed(ns: PodNetns, who: str) -> None:
    have = committed_rules(ns)
    if any(have.values()):
        raise AssertionError(f"{who}: a skipped pod got rules in {ns.name}: {have}")


def build_image_python_bundle(out: Path, shim: Path, root: Path = REPO) -> Path:
    """The bundle of the tree at ``root`` (its src/ and installer/, compiled modules built in
    place; default: this one) as ``IMAGE_PYTHON`` builds it, i.e. as the node image ships it.
    The venv's compiled modules are CPython 3.11 ABI and load in either interpreter;
    ``_cffi_backend`` and PyYAML, which that interpreter lacks, come from the venv through
    ``shim`` (symlinks), nothing else does."""
    import _cffi_backend
    import yaml

    shim.mkdir(parents=True, exist_ok=True)
    for target in (Path(_cffi_backend.__file__), Path(yaml.__file__).parent):
        link = shim / target.name
        if not link.exists():
            link.symlink_to(target)
    paths = [str(shim), str(root / "src"), str(root / "installer")]
    code = f"import sys;sys.path[:0]={paths!r};from istio_cni_installer.bundle import build;build({str(out)!r})"
    subprocess.run([IMAGE_PYTHON, "-I", "-c", code], check=True, timeout=300, capture_output=True)
    return out


def image_python_usable() -> str:
    """"" when ``IMAGE_PYTHON`` can build the bundle, else why not."""
    try:
        r = subprocess.run([IMAGE_PYTHON, "-I", "-c", "import sys;print(sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"{IMAGE_PYTHON}: {e.strerror}"
    if r.stdout.strip() != str(sys.version_info[:2]):
        return f"{IMAGE_PYTHON} is {r.stdout.strip() or r.stderr.strip()[-200:]}, the venv {sys.version_info[:2]}"
    return ""


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def settle(window: float = 0.05, idle: float = 0.85, limit: float = 1.0) -> float:
    """Wait (untimed, at most ``limit`` s) until the machine is quiet: a ``window`` in which
    the CPUs were at least ``idle`` idle. Returns the seconds waited.

    What it is for: deleting a pod netns hands its teardown to a kernel worker (``cleanup_net``:
    veths, netfilter tables, RCU grace periods), which keeps a core busy for a few ms after
    ``ip netns delete`` has returned, and the previous variant's own exits and deferred work do
    the same. Without this the next variant of a round pays for that on a 2-core machine.
    """
    start = time.monotonic()
    idle0, total0 = _cpu_times()
    while True:
        time.sleep(window)
        idle1, total1 = _cpu_times()
        busy_free = (idle1 - idle0) / max(total1 - total0, 1)
        now = time.monotonic()
        if busy_free >= idle or now - start >= limit:
            return now - start
        idle0, total0 = idle1, total1


def shipped_bundle(out: Path, shim: Path) -> tuple[str, str]:
    """(bundle path, who built it): this tree's bundle built by ``IMAGE_PYTHON`` as the node
    image builds it, or, when that interpreter is missing or another Python version, by the
    venv's, named so in the second item (every benchmark record that uses it says which)."""
    why_not = image_python_usable()
    if why_not:
        from istio_cni_installer.bundle import build

        return build(out).path, f"the venv's interpreter ({why_not})"
    return str(build_image_python_bundle(out, shim)), f"{IMAGE_PYTHON}, as the node image"
