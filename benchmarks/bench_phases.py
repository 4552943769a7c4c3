"""Where an ADD's time goes: every phase of the direct and the agent path next to its floor.

Command: ``.venv/bin/python -m pytest benchmarks/bench_phases.py -p no:cacheprovider
--benchmark-json=.benchmarks/phases.json`` (root; part of ``make bench``). The phase table is
printed by ``benchmarks/check_budgets.py`` from ``extra_info`` of the ``phases`` benchmark.

Phases come from the real plugin (bundle + launcher) run through a *probe launcher*: the same
bundled interpreter, ``-I -S``, whose ``-c`` line takes ``time.monotonic()`` first and then
runs ``benchmarks/phaseprobe.py``, which wraps the phase functions with timers and imports
up front every module the ADD needs before its pod GET (listed in import order by a first
run), so those imports are one row. The modules a redirected pod needs after the GET are
imported as in a real ADD: while the C thread's TLS client and the API server work on the
connection, the handshake and the request (``plugin.ImportAhead``), so they are inside the
exchange row, and their own time is the "import-ahead" row (information, not added up again). The
parent reads CLOCK_MONOTONIC right before spawning and right after reaping: interpreter start
= first line - spawn, result and exit = reaped - the moment the result is written. The
probe's own cost (reading and compiling phaseprobe.py) is its own row, outside the others.

Floors, measured in the same run against the same API server and netns shape:

* interpreter start / result and exit: the bundled interpreter through an identical launcher
  running one line (``time.monotonic()`` to stderr) and exiting;
* imports: a fresh interpreter importing only the compiled modules this ADD loads (``.so``
  files: the dynamic loading nothing can avoid);
* everything else: the same operation in this warm process (nothing to import or first-call,
  e.g. the C thread's whole exchange (connect, handshake, GET) with OpenSSL loaded, reading
  that answer's HTTP and JSON, a libiptc commit into a fresh netns);
  for the agent exchange, the same request bytes answered by a
  minimal AF_UNIX server with the same answer.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import harness
import pytest
from bench_add import _container_id
from bench_agent import _agent_node
from harness import REDIRECT_POD

from istio_cni_installer.front import configure, read_config

BENCH = Path(__file__).resolve().parent
PROBE = BENCH / "phaseprobe.py"
ROUNDS = int(os.environ.get("ISTIO_CNI_BENCH_PHASE_ROUNDS", "20"))
FLOOR_ROUNDS = 20

def _bundle(plugin) -> tuple[str, str, str]:
    """(python, lib dir, site dir) of the bundle our launcher (the configured front) points at."""
    config = read_config((plugin.bin_dir / "istio-cni").read_bytes())
    site = re.search(r"sys\.path\.insert\(0,'([^']+)'\)", config["code"]).group(1)
    return config["python"], config["lib"], site


def _launcher(path: Path, python: str, lib: str, code: str, front: Path) -> Path:
    """A launcher shaped exactly like the installer's: the compiled front (copied from
    ``front``, the installed one) configured to exec ``python -I -S -c code``."""
    path.write_bytes(configure(front.read_bytes(), {"python": python, "lib": lib, "code": code}))
    path.chmod(0o755)
    return path


def _sh_launcher(path: Path, python: str, lib: str, code: str) -> Path:
    """The ``#!/bin/sh`` launcher the front replaced (sh, LD_LIBRARY_PATH, exec -I -S -c):
    the before of the front lever, sampled in the same rounds."""
    path.write_text("#!/bin/sh\n"
                    f"LD_LIBRARY_PATH={shlex.quote(lib)}\nexport LD_LIBRARY_PATH\n"
                    f"exec {shlex.quote(python)} -I -S -c {shlex.quote(code)} \"$@\"\n")
    path.chmod(0o755)
    return path


def _spawn(argv, env: dict, stdin: bytes) -> tuple[float, float, int, bytes, bytes]:
    """(spawn, reaped) on CLOCK_MONOTONIC, exit code, stdout, stderr."""
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    t0 = time.monotonic()
    p = subprocess.Popen([str(a) for a in argv], stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, close_fds=True)
    os.close(r)
    out, err = p.communicate(timeout=60)
    t1 = time.monotonic()
    return t0, t1, p.returncode, out, err


def _phases(err: bytes) -> dict:
    for line in err.decode(errors="replace").splitlines():
        if line.startswith("PHASES "):
            return ast.literal_eval(line[len("PHASES "):])
    raise AssertionError(f"probe printed no PHASES line:\n{err.decode(errors='replace')[-2000:]}")


def _rows_of(t0: float, t1: float, ph: dict, agent_work: float | None) -> dict:
    m, acc = ph["marks"], ph["acc"]
    wall = t1 - t0
    rows = {"interpreter": m["first"] - t0, "probe": m["probe"] - m["first"],
            "imports": m["imported"] - m["probe"], "exit": t1 - m["result"]}
    for k in ("parse", "netns_check", "kubeconfig", "tls_context", "exchange", "decide", "addresses", "commit"):
        rows[k] = acc.get(k, 0.0)
    ahead = acc.get("ahead", 0.0)  # inside the exchange: added to the table, not to the sum
    # get_pod wraps the kubeconfig, the TLS material and the C thread's exchange: its own part
    # is what is left.
    rows["after_imports"] = acc.get("after_imports", 0.0)
    rows["get"] = max(acc.get("get_pod", 0.0) - sum(rows[k] for k in ("kubeconfig", "tls_context", "exchange",
                                                                     "after_imports")), 0.0)
    if agent_work is not None:
        rows["agent_work"] = agent_work
        rows["agent_channel"] = max(acc.get("agent", 0.0) - agent_work, 0.0)
    rows["other"] = wall - sum(rows.values())
    rows["wall"] = wall
    rows["ahead"] = ahead
    # Inside the exchange (information, not added up again): the C thread's own steps, from
    # the GET's start (HttpsGet made) to its end, and how far the OpenSSL warm-up was then.
    steps = ("kickoff", "start", "context", "connected", "handshake", "answer", "done")
    if all(f"tls_{k}" in m for k in steps):
        for a, b in zip(steps, steps[1:], strict=False):
            rows[f"cthread_{b}"] = m[f"tls_{b}"] - m[f"tls_{a}"]
    if "pre_start" in m and "pre_done" in m:  # the front's child made the exchange (prefetch.h)
        rows["prefetch_exchange"] = m["pre_done"] - m["pre_start"]
        rows["prefetch_ready"] = m["pre_done"] - m["first"]  # negative: before the interpreter ran
    if "warm_context" in m and "warm_start" in m:
        rows["warm"] = m["warm_context"] - m["warm_start"]
        rows["warm_started"] = m["warm_start"] - m["first"]  # after the interpreter's start
    return rows


class Prober:
    """Runs ADDs through the probe launcher and collects per-round phase dicts."""

    def __init__(self, plugin, tmp: Path) -> None:
        self.plugin = plugin
        self.python, self.lib, self.site = _bundle(plugin)
        code = (f"import time;T0=time.monotonic();P={str(PROBE)!r};"
                "exec(compile(open(P,'rb').read(),P,'exec'))")
        self.front = plugin.bin_dir / "istio-cni"
        self.launcher = _launcher(tmp / "istio-cni-probe", self.python, self.lib, code, self.front)
        # The direct path as kubelet runs it: the front's whole config (its agent attempt, then
        # the pod GET it starts itself, src/front/prefetch.h), the probe's code.
        config = {**read_config(self.front.read_bytes()), "python": self.python, "lib": self.lib, "code": code}
        self.kubelet_launcher = tmp / "istio-cni-probe-as-kubelet"
        self.kubelet_launcher.write_bytes(configure(self.front.read_bytes(), config))
        self.kubelet_launcher.chmod(0o755)
        self.modules: list[str] = []

    def add(self, ns, run_dir: Path, pod: str = REDIRECT_POD, normal_exit: bool = False,
            as_kubelet: bool = False) -> tuple[float, float, dict]:
        from istio_cni._fastpath import json_dumps

        env = harness.cni_env(str(self.plugin.bin_dir), ns, pod, _container_id())
        env["ISTIO_CNI_PHASE_SITE"] = self.site
        if normal_exit:
            env["ISTIO_CNI_PHASE_NORMAL_EXIT"] = "1"
        env["ISTIO_CNI_PHASE_MODULES"] = " ".join(self.modules)
        stdin = json_dumps(harness.netconf(str(run_dir), ns.prev_result())).encode()
        t0, t1, rc, out, err = _spawn([self.kubelet_launcher if as_kubelet else self.launcher], env, stdin)
        assert rc == 0, (out, err.decode(errors="replace")[-2000:])
        return t0, t1, _phases(err)

    def front_add(self, ns, run_dir: Path, pod: str = REDIRECT_POD) -> float:
        """Wall time of the same ADD through the installed front (as kubelet runs it): on the
        agent path it answers without the interpreter (src/front/)."""
        from istio_cni._fastpath import json_dumps

        env = harness.cni_env(str(self.plugin.bin_dir), ns, pod, _container_id())
        stdin = json_dumps(harness.netconf(str(run_dir), ns.prev_result())).encode()
        t0, t1, rc, out, err = _spawn([self.front], env, stdin)
        assert rc == 0 and not err, (out, err.decode(errors="replace")[-2000:])
        return t1 - t0

    def list_modules(self, ns, run_dir: Path) -> tuple[list[str], list[str]]:
        """(every module, the compiled ones) an ADD through ``run_dir`` imports."""
        saved, self.modules = self.modules, []
        try:
            got = self.add(ns, run_dir)[2]
            return got["modules"], got["extensions"]
        finally:
            self.modules = saved


def _median_rows(rounds: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in rounds) * 1e3, 3) for k in rounds[0]}


def _timeit(fn, n: int = FLOOR_ROUNDS, setup=None) -> float:
    """Median ms of ``fn`` in this warm process (one untimed warm-up call)."""
    args = setup() if setup else ()
    fn(*args)
    samples = []
    for _ in range(n):
        args = setup() if setup else ()
        t = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - t)
    return round(statistics.median(samples) * 1e3, 3)


class ProcessFloors:
    """The bare interpreter (start; exit after one line) and a process loading only the compiled
    modules of an ADD; one sample of each per ``sample()``, so they interleave with the rounds."""

    def __init__(self, prober: Prober, tmp: Path, tag: str, compiled: list[str]) -> None:
        self.compiled = compiled
        bare = "import time,sys,posix;sys.stderr.write(repr(time.monotonic()));sys.stderr.flush();posix._exit(0)"
        self.bare = _launcher(tmp / f"bare-{tag}", prober.python, prober.lib, bare, prober.front)
        self.bare_sh = _sh_launcher(tmp / f"bare-sh-{tag}", prober.python, prober.lib, bare)
        code = (f"import time,sys;t=time.monotonic();sys.path.insert(0,{prober.site!r});"
                f"[__import__(m) for m in {compiled!r}];sys.stderr.write(repr(time.monotonic()-t))")
        self.dlopen = _launcher(tmp / f"dlopen-{tag}", prober.python, prober.lib, code, prober.front)
        self.starts, self.exits, self.loads, self.starts_sh = [], [], [], []

    def _bare(self) -> None:
        t0, t1, rc, _out, err = _spawn([self.bare], {"PATH": "/usr/bin:/bin"}, b"")
        assert rc == 0, err
        first = float(err.decode())
        self.starts.append(first - t0)
        self.exits.append(t1 - first)

    def _bare_sh(self) -> None:
        t0, _t1, rc, _out, err = _spawn([self.bare_sh], {"PATH": "/usr/bin:/bin"}, b"")
        assert rc == 0, err
        self.starts_sh.append(float(err.decode()) - t0)

    def sample(self) -> None:
        # Front and shell launcher alternate which goes first: the first spawn of a round meets
        # colder caches, and a fixed order showed up as a 0.5 ms "difference" between them.
        pair = (self._bare, self._bare_sh) if len(self.starts) % 2 == 0 else (self._bare_sh, self._bare)
        for spawn in pair:
            spawn()
        _t0, _t1, rc, _out, err = _spawn([self.dlopen], {"PATH": "/usr/bin:/bin"}, b"")
        assert rc == 0, err
        self.loads.append(float(err.decode()))

    def medians(self) -> dict:
        return {"interpreter": round(statistics.median(self.starts) * 1e3, 3),
                "interpreter_sh": round(statistics.median(self.starts_sh) * 1e3, 3),
                "exit": round(statistics.median(self.exits) * 1e3, 3),
                "imports": round(statistics.median(self.loads) * 1e3, 3),
                "imports_what": f"{len(self.compiled)} compiled modules: " + " ".join(self.compiled)}


def _warm_floors(plugin, pool, pod_ruleset) -> dict:
    from istio_cni import netfilter, transport
    from istio_cni._fastpath import json_dumps, json_loads
    from istio_cni.config import parse_conf
    from istio_cni.decide import decide
    from istio_cni.http1 import Received, read_response
    from istio_cni.k8s import Client, pod_path
    from istio_cni.kubeconfig import load
    from istio_cni.netfilter.routes import netns_addresses
    from istio_cni.redirect import redirect_from_pod
    from istio_cni.rules.builder import build
    from istio_cni.skel import check_netns

    ns = pool.new()
    stdin = json_dumps(harness.netconf(str(plugin.run_dir), ns.prev_result())).encode()
    conf = parse_conf(json_loads(stdin))
    kc_path = conf.kubeconfig
    cluster = load(kc_path)
    # As the one-shot plugin does it (an IP host), resuming its kept TLS session.
    session = plugin.bin_dir.parent / "phase-floor-tls-session"
    client = Client(cluster, tls_in_c=True, tls_session_file=str(session))
    path = pod_path(harness.POD_NAMESPACE, REDIRECT_POD)
    pod = client.get(path)
    answer = client._exchange_in_c(path, time.monotonic() + 5)
    assert answer is not None, "the C thread's TLS client is unusable here"
    raw = answer.data.tobytes()

    def kubeconfig():
        with open(kc_path, "rb") as f:
            json_loads(f.read())

    def get_here():
        json_loads(read_response(Received(raw))[2])

    floors = {
        "parse": _timeit(lambda: json_loads(stdin)),
        "netns_check": _timeit(lambda: check_netns(ns.path)),
        "kubeconfig": _timeit(kubeconfig),
        "tls_context": _timeit(lambda: transport.tls_material(cluster)),
        "exchange": _timeit(lambda: client._exchange_in_c(path, time.monotonic() + 5)),
        "get": _timeit(get_here),
    }
    floors["decide"] = _timeit(lambda: build(redirect_from_pod(pod, addresses=[f"{ns.address}/24"]))
                               if decide(pod) else None)
    floors["addresses"] = _timeit(lambda: netns_addresses(ns.path))

    def fresh():
        pool.recycle()
        return (pool.new(),)

    floors["commit"] = _timeit(lambda n: netfilter.apply(n.path, pod_ruleset), setup=fresh)
    pool.recycle()
    return floors


def _unix_floor(sock_dir: Path, request: bytes, answer: bytes) -> float:
    """Warm AF_UNIX round trip of ``request`` -> ``answer`` through a minimal server thread."""
    path = str(sock_dir / "floor.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s" % (len(answer), answer))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            c, _ = srv.accept()
            with c:
                got = b""
                while len(got) < len(request):  # the whole request, then the answer
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                c.sendall(reply)

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def once():
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.sendall(request)
        while c.recv(65536):
            pass
        c.close()

    try:
        return _timeit(once)
    finally:
        stop.set()
        once_more = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # unblock accept()
        try:
            once_more.connect(path)
            once_more.sendall(request)
        finally:
            once_more.close()
        th.join(5)
        srv.close()


def _agent_ms(log_dir: Path, since: int) -> list[float]:
    """The agent's own 'ms' of each committed ADD, from its log lines (in order)."""
    import json

    out = []
    for f in sorted(log_dir.glob("agent-*.log")):
        for line in f.read_text(errors="replace").splitlines():
            if '"redirect rules committed"' in line and '"via":"agent"' in line:
                out.append(float(json.loads(line)["ms"]))
    return out[since:]


@pytest.fixture(scope="module")
def phase_agent(tmp_path_factory, bench_api, our_plugin):
    base = tmp_path_factory.mktemp("phase-agent")
    for plugin, _api in _agent_node(base, bench_api, our_plugin, 0):
        yield plugin, base


def before_the_get(modules: list[str], compiled: list[str]) -> tuple[list[str], list[str]]:
    """The part of an ADD's imports (in import order) before the pod GET: up to the first
    module the plugin imports ahead while the API server works (its netconf's backend is
    ``auto``); the compiled modules among them (the imports floor)."""
    from istio_cni.plugin import ImportAhead

    ahead = set(ImportAhead("auto").names)
    first = next((i for i, m in enumerate(modules) if m in ahead), len(modules))
    return modules[:first], [m for m in compiled if m in modules[:first]]


def bench_phases(benchmark, our_plugin, phase_agent, netns_pool, pod_ruleset, tmp_path, record):
    agent_plugin, agent_logs = phase_agent
    prober = Prober(our_plugin, tmp_path)
    ns = netns_pool.new()
    prober.modules, compiled = before_the_get(*prober.list_modules(ns, our_plugin.run_dir))
    agent_modules, agent_compiled = prober.list_modules(netns_pool.new(), agent_plugin.run_dir)
    netns_pool.recycle()
    direct, agent, front_agent = [], [], []
    direct_floor = ProcessFloors(prober, tmp_path, "direct", compiled)
    agent_floor = ProcessFloors(prober, tmp_path, "agent", agent_compiled)

    def one_round():
        # Interleaved, so both paths and their floors see the same machine load; each ADD on
        # a fresh netns.
        direct_floor.sample()
        agent_floor.sample()
        ns = netns_pool.new()
        t0, t1, ph = prober.add(ns, our_plugin.run_dir, as_kubelet=True)
        harness.assert_redirect_committed(ns, pod_ruleset, "phase probe (direct)")
        row = _rows_of(t0, t1, ph, None)
        # Lever check, paired in the same round: the same ADD leaving through interpreter
        # finalisation (sys.exit) instead of the plugin's flush + os._exit.
        ns = netns_pool.new()
        t0, t1, ph = prober.add(ns, our_plugin.run_dir, normal_exit=True, as_kubelet=True)
        row["exit_normal"] = t1 - ph["marks"]["result"]
        direct.append(row)
        saved, prober.modules = prober.modules, agent_modules
        try:
            before = len(_agent_ms(agent_logs, 0))
            ns = netns_pool.new()
            t0, t1, ph = prober.add(ns, agent_plugin.run_dir)
            work = _agent_ms(agent_logs, before)
            assert len(work) == 1 and ph["calls"].get("get_pod") is None, "agent ADD fell back"
            agent.append(_rows_of(t0, t1, ph, work[0] / 1e3))
        finally:
            prober.modules = saved
        front_agent.append(prober.front_add(netns_pool.new(), agent_plugin.run_dir))
        netns_pool.recycle()

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    floors = direct_floor.medians()
    floors_agent = agent_floor.medians()
    floors.update(_warm_floors(our_plugin, netns_pool, pod_ruleset))
    body = b"x" * 1500  # a netconf-sized request
    request = b"POST /v1/cni HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    floors_agent["agent_channel"] = _unix_floor(tmp_path, request, b'{"result":{"cniVersion":"1.0.0"}}' * 8)
    floors_agent["agent_work"] = round(floors["decide"] + floors["addresses"] + floors["commit"], 3)
    for k in ("parse", "netns_check"):
        floors_agent[k] = floors[k]
    record(benchmark, "phases", phase_rounds=ROUNDS,
           phases_direct_ms=_median_rows(direct), phases_agent_ms=_median_rows(agent),
           floors_direct_ms=floors, floors_agent_ms=floors_agent,
           modules_direct=len(prober.modules), modules_agent=len(agent_modules),
           front_agent_wall_ms=round(statistics.median(front_agent) * 1e3, 3))
