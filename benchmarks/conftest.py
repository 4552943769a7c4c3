"""Benchmark session: collection of ``bench_*.py``, the API server, plugins, pod namespaces.

Everything a per-exec ADD benchmark compares runs against the same things: one API server on
127.0.0.1 serving the same pods, the same netconf (today's upstream dialect, kubeconfig at
``<cni_agent_run_dir>/istio-cni-kubeconfig``), and a fresh pod netns per round made in
pytest-benchmark's ``setup=`` (never timed).

API server (``ISTIO_CNI_BENCH_API``): ``real`` = etcd + kube-apiserver (tests/peers
``control_plane``), ``fake`` = the in-process fake over TLS with a bearer token
(tests/peers/fakeapi.py), ``auto`` (default) = real when kube-apiserver was built, else fake.
Every benchmark records which in ``extra_info["api_server"]``.

Roles: each benchmark sets ``extra_info["role"]``; benchmarks/check_budgets.py finds the
figures the budgets compare by role (see its ROLES).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
for p in (str(TESTS), str(BENCH)):  # peers.* (API servers, tools) and harness/baselines
    if p not in sys.path:
        sys.path.insert(0, p)

import harness  # noqa: E402

VENV_PLUGIN = REPO / ".venv" / "bin" / "istio-cni"
from harness import REDIRECT_POD  # noqa: E402


def pytest_configure(config):
    """Benchmarks live in ``bench_*.py`` as ``bench_*`` functions (so ``make test``, which
    collects ``test_*``, never runs them); ``test_*`` names are collected here as well."""
    for key, pattern in (("python_files", "bench_*.py"), ("python_functions", "bench_")):
        if pattern not in config.getini(key):
            config.addinivalue_line(key, pattern)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="benchmarks create network namespaces: run as root"))


class BenchAPI:
    """The API server the benchmarks share: ``kind``, ``server``, ``ca_file``, ``token``."""

    def __init__(self, kind: str, server: str, ca_file: Path, token: str, note: str) -> None:
        self.kind, self.server, self.ca_file, self.token, self.note = kind, server, ca_file, token, note

    def write_kubeconfig(self, run_dir: Path) -> Path:
        """``<run_dir>/istio-cni-kubeconfig``, where both plugins look for it."""
        from peers.kubeapi import write_kubeconfig

        run_dir.mkdir(parents=True, exist_ok=True)
        return write_kubeconfig(run_dir / "istio-cni-kubeconfig", self.server, self.ca_file,
                                self.token, "istio-cni")


def _api_kind() -> tuple[str, str]:
    from peers.tools import build_failure

    wanted = os.environ.get("ISTIO_CNI_BENCH_API", "auto")
    if wanted not in ("auto", "real", "fake"):
        raise pytest.UsageError(f"ISTIO_CNI_BENCH_API={wanted!r}: want auto, real or fake")
    if wanted != "auto":
        return wanted, f"chosen by ISTIO_CNI_BENCH_API={wanted}"
    why = build_failure("kube-apiserver")
    if why is None:
        return "real", "kube-apiserver is built"
    return "fake", f"kube-apiserver unavailable ({why.splitlines()[0]})"


@pytest.fixture(scope="session")
def bench_api(tmp_path_factory):
    """One API server for the whole run, serving the redirected and the plain pod."""
    kind, why = _api_kind()
    pods = harness.bench_pods()
    if kind == "fake":
        import secrets

        from peers import fakeapi

        # socketserver's default listen backlog is 5: 64 simultaneous ADDs would see dropped
        # SYNs and 1-3 s retransmits, measuring the fake instead of the plugins.
        fakeapi._Server.request_queue_size = 256
        token = secrets.token_hex(16)
        with fakeapi.FakeAPI(tls_dir=tmp_path_factory.mktemp("bench-fake-api"), token=token) as fake:
            for pod in pods:
                fake.add_pod(pod)
            yield BenchAPI("fake", fake.url, fake.ca_file, token,
                           f"in-process fake API over TLS on 127.0.0.1 ({why})")
        return
    from peers.fixtures import running_control_plane

    with running_control_plane(tmp_path_factory.mktemp("bench-control-plane")) as cp:
        cp.create_namespace(harness.POD_NAMESPACE)
        cp.create_namespace("istio-system")
        for pod in pods:
            cp.create_pod(pod)
        # The plugin's own identity: may only get pods, as the chart's ClusterRole allows.
        token, _ = cp.api.limited_identity(
            "istio-system", "istio-cni-bench", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            tmp_path_factory.mktemp("bench-identity") / "kubeconfig")
        yield BenchAPI("real", cp.server, cp.ca_file, token,
                       f"etcd + kube-apiserver on 127.0.0.1, pod-get-only token ({why})")


class Plugin:
    """A CNI plugin executable in its own bin dir, with its own agent run dir; ``agent``: the
    node agent serving that run dir (bench_agent.AgentProcess), None on the direct path."""

    def __init__(self, label: str, bin_dir: Path, run_dir: Path, launcher: str) -> None:
        self.label, self.bin_dir, self.run_dir, self.launcher = label, bin_dir, run_dir, launcher
        self.exe = bin_dir / "istio-cni"
        self.agent = None

    def add(self, ns: harness.PodNetns, pod: str, container_id: str, timeout: float = 60.0,
            rss: bool = False):
        from istio_cni._fastpath import json_dumps

        env = harness.cni_env(str(self.bin_dir), ns, pod, container_id)
        conf = harness.netconf(str(self.run_dir), ns.prev_result())
        stdin = json_dumps(conf)
        return harness.run_process([self.exe], env, stdin if isinstance(stdin, bytes) else stdin.encode(),
                                   timeout=timeout, rss=rss)


def _our_bin_dir(base: Path) -> tuple[Path, str]:
    """The plugin as kubelet runs it: the installer's bundle + its compiled front.

    The bundle is built by the node image's interpreter (``harness.IMAGE_PYTHON``), as users
    run it; by the venv's when that one is missing or another Python version, and the label
    says so. Falls back to the venv console script (recorded in ``launcher``) when no bundle
    can be built, so the numbers always say which one they measured.
    """
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True)
    try:
        from istio_cni_installer.binaries import Binaries
        from istio_cni_installer.bundle import read_manifest
    except ImportError as e:
        (bin_dir / "istio-cni").symlink_to(VENV_PLUGIN)
        return bin_dir, f"venv console script {VENV_PLUGIN} (bundle builder unavailable: {e})"
    path, built_by = harness.shipped_bundle(base / "bundle", base / "shim")
    Binaries(path, mounted=str(bin_dir), host=str(bin_dir)).ensure()
    m = read_manifest(path)
    mib = m["size_bytes"] / 2**20
    return bin_dir, (f"bundle front (compiled launcher -> bundled python {m.get('python_version', '?')} -I -S), "
                     f"bundle {mib:.1f} MiB built by {built_by}")


@pytest.fixture(scope="session")
def our_plugin(tmp_path_factory, bench_api) -> Plugin:
    base = tmp_path_factory.mktemp("ours")
    bin_dir, launcher = _our_bin_dir(base)
    run_dir = base / "run"
    bench_api.write_kubeconfig(run_dir)  # no agent.sock in it: the direct path
    return Plugin("istio-cni (this project)", bin_dir, run_dir, launcher)


@pytest.fixture(scope="session")
def upstream_plugin(tmp_path_factory, bench_api) -> Plugin:
    """Upstream's Go istio-cni; a build that failed skips its benchmarks with the recorded
    reason (the budget checker then falls back to baseline 2 and says so)."""
    from peers.tools import CACHE, build_failure

    why = build_failure("istio-cni")
    if why:
        pytest.skip(f"upstream Go istio-cni unavailable: {why}")
    base = tmp_path_factory.mktemp("upstream")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "istio-cni").symlink_to((CACHE / "bin" / "istio-cni").resolve())
    run_dir = base / "run"
    bench_api.write_kubeconfig(run_dir)
    return Plugin("istio-cni (upstream Go)", bin_dir, run_dir, "Go binary")


@pytest.fixture(scope="session")
def pod_ruleset():
    """The RuleSet our plugin commits for the sidecar pod (the baselines program the same)."""
    from istio_cni.redirect import redirect_from_pod
    from istio_cni.rules.builder import build

    ns_address = f"{harness.POD_SUBNET}.10/24"
    return build(redirect_from_pod(harness.sidecar_pod(REDIRECT_POD), (ns_address,)))


@pytest.fixture(scope="module")
def paired_agent_plugin(tmp_path_factory, bench_api, our_plugin):
    """Our plugin whose run dir holds a live node agent's socket (bench_agent's node), for the
    paired benchmark: the agent ADD then sees the same load as the figures it is compared with."""
    from bench_agent import _agent_node

    yield from _agent_node(tmp_path_factory.mktemp("paired-agent-node"), bench_api, our_plugin, 0)


@pytest.fixture
def netns_pool(request):
    """Fresh pod namespaces for benchmark rounds; everything left is deleted at teardown."""
    pool = harness.NetnsPool(request.node.name.replace("_", "")[:6])
    yield pool
    pool.close()


@pytest.fixture
def record(bench_api):
    """``record(benchmark, role, **info)``: tag a benchmark for the budget checker."""

    def tag(benchmark, role: str, **info) -> None:
        benchmark.extra_info.update(role=role, api_server=bench_api.kind, api_server_note=bench_api.note,
                                    **info)

    return tag
